"""Synthetic documents for the access-control probes: each project holds facts no other document shares
(a code name, a budget, a lead, a site, a catch phrase, a Chinese code name), so that any of them in a
response shows exactly which document leaked."""

# The tables below read best one document per line.
# ruff: noqa: E501

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Project:
    code: str  # e.g. NIGHTJAR-7731
    zh: str  # Chinese code name
    budget: str  # e.g. 4,182,377
    lead: str
    site: str
    phrase: str  # a sentence found in this document only
    group: str  # the acl group: a, b or public ("" for a document without groups)
    kb: str
    chunk_ids: list[str] = field(default_factory=list)

    @property
    def word(self) -> str:
        return self.code.split("-")[0].capitalize()

    @property
    def doc_id(self) -> str:
        return f"{self.group or 'nogroup'}-{self.code.lower()}.md"

    @property
    def title(self) -> str:
        return f"Project {self.code} Charter"

    def text(self) -> str:
        return (
            f"# {self.title}\n\n"
            f"Project {self.code} (internal code name {self.word}) has an approved budget of {self.budget} euros "
            f"for the coming fiscal year. The project is led by {self.lead} and is run from the {self.site} site.\n\n"
            f"{self.phrase}\n\n"
            f"项目{self.zh}的预算为{self.budget}欧元，负责人是{self.lead}，工作地点在{self.site}。\n"
        )

    def markers(self) -> list[str]:
        """What must never reach a caller who may not read this document (compared in lower case)."""
        return [self.code, self.word, self.zh, self.budget, self.budget.replace(",", ""), self.lead, self.site,
                self.phrase, self.doc_id, self.title, *self.chunk_ids]  # fmt: skip


# Bird code names for the documents an employee of group `a` must never see; minerals for their own.
_B = [
    ("NIGHTJAR-7731", "夜鹰", "4,182,377", "Ottilie Vanterpool", "Skagway", "The vermilion lattice protocol is frozen until the quarterly review."),
    ("KESTREL-2958", "红隼", "7,305,119", "Barnaby Quistgaard", "Tromsø", "Every prototype must pass the saltwater gauntlet before shipping."),
    ("ALBATROSS-4410", "信天翁", "2,946,803", "Leocadia Pemberton", "Punta Arenas", "The cobalt ferry contract renews itself on leap days only."),
    ("KINGFISHER-6623", "翠鸟", "9,517,264", "Thaddeus Okonkwo", "Hobart", "Night shifts at the glass foundry are paid in double tokens."),
    ("CORMORANT-1187", "鸬鹚", "3,674,590", "Ingeborg Castellanos", "Ushuaia", "The obsolete lantern servers are decommissioned every solstice."),
    ("EGRET-8840", "白鹭", "6,091,342", "Cassius Drummond-Yeo", "Longyearbyen", "Tidal batteries are charged only during the amber window."),
    ("SWIFTLET-3306", "雨燕", "1,258,966", "Philippa Arkwright", "Dunedin", "The marble orchard audit requires three notarised witnesses."),
    ("SHRIKE-5572", "伯劳", "8,420,731", "Evander Lindqvist", "Reykjavik", "Only the copper owl badge opens the vault on floor nineteen."),
    ("HOOPOE-9014", "戴胜", "5,733,018", "Marisol Achterberg", "Nuuk", "The indigo compass fund pays for two sabbaticals a decade."),
    ("WAGTAIL-2219", "鹡鸰", "2,087,455", "Oswin Takahara", "Yellowknife", "Quarterly telescopes are rented from the velvet observatory."),
]  # fmt: skip
_B_SECRET = [
    ("PTARMIGAN-6480", "雷鸟", "3,339,207", "Rosalind Ekwueme", "Barrow", "The ember registry is sealed with a walnut stamp."),
    ("BITTERN-7095", "麻鳽", "6,612,584", "Alaric Fontaine-Moss", "Kiruna", "Saffron drones survey the northern dunes every Tuesday."),
    ("AVOCET-3352", "反嘴鹬", "9,004,861", "Seraphina Wolcott", "Ilulissat", "The pewter harbour lease is paid in herring futures."),
]  # fmt: skip
_A = [
    ("BASALT-1402", "玄武岩", "1,402,655", "Greta Holmberg", "Bergen", "Basalt onboarding kits ship on the first Monday."),
    ("OBSIDIAN-2513", "黑曜石", "2,513,776", "Henrik Salo", "Turku", "The obsidian helpdesk answers within four hours."),
    ("GARNET-3624", "石榴石", "3,624,887", "Ines Moreau", "Lyon", "Garnet laptops are refreshed every thirty months."),
    ("MALACHITE-4735", "孔雀石", "4,735,998", "Jonas Weber", "Leipzig", "The malachite canteen serves lunch until three."),
    ("TURQUOISE-5846", "绿松石", "5,846,109", "Klara Novak", "Brno", "Turquoise parking permits are renewed in January."),
    ("AMBER-6957", "琥珀", "6,957,210", "Lukas Berg", "Gdansk", "The amber library lends books for six weeks."),
    ("AGATE-7068", "玛瑙", "7,068,321", "Mira Koval", "Lviv", "Agate travel requests need two days of notice."),
    ("QUARTZ-8179", "石英", "8,179,432", "Nils Ahlgren", "Uppsala", "The quartz gym opens at six every weekday."),
    ("MICA-9280", "云母", "9,280,543", "Olga Petrova", "Tartu", "Mica badges are printed at the front desk."),
    ("FELDSPAR-1391", "长石", "1,391,654", "Pavel Dvorak", "Ostrava", "Feldspar bicycles may be borrowed overnight."),
]  # fmt: skip
_A_SECRET = [
    ("GRANITE-2046", "花岗岩", "2,046,135", "Quinn Laine", "Oulu", "Granite desks are booked through the portal."),
]  # fmt: skip
_PUBLIC = [
    ("LIMESTONE-3157", "石灰石", "3,157,246", "Rita Sorensen", "Aarhus", "The limestone lobby is open to visitors at noon."),
    ("SANDSTONE-4268", "砂岩", "4,268,357", "Sven Olsen", "Odense", "Sandstone newsletters are published every Friday."),
]  # fmt: skip
# Without any group: readable by admins only (fail closed), never by a group member.
_NOGROUP = [
    ("LAPWING-5379", "凤头麦鸡", "5,379,468", "Ulrike Brandt", "Kiel", "The lapwing ledger is reconciled by hand."),
]  # fmt: skip


def _projects(rows: list[tuple[str, str, str, str, str, str]], group: str, kb: str) -> list[Project]:
    return [
        Project(code=c, zh=z, budget=b, lead=ld, site=s, phrase=p, group=group, kb=kb) for c, z, b, ld, s, p in rows
    ]


B_DOCS = _projects(_B, "b", "default")
B_SECRET_DOCS = _projects(_B_SECRET, "b", "secret")
A_DOCS = _projects(_A, "a", "default")
A_SECRET_DOCS = _projects(_A_SECRET, "a", "secret")
PUBLIC_DOCS = _projects(_PUBLIC, "public", "default")
NOGROUP_DOCS = _projects(_NOGROUP, "", "default")
ALL_DOCS = [*B_DOCS, *B_SECRET_DOCS, *A_DOCS, *A_SECRET_DOCS, *PUBLIC_DOCS, *NOGROUP_DOCS]
# What a key of group `a` must never see, wherever it asks.
FORBIDDEN_TO_A = [*B_DOCS, *B_SECRET_DOCS, *NOGROUP_DOCS]


def write_corpus(root: Path) -> dict[tuple[str, str], Path]:
    """One folder per (kb, group) with that set's documents; returns the folders."""
    folders: dict[tuple[str, str], Path] = {}
    for project in ALL_DOCS:
        folder = root / project.kb / (project.group or "nogroup")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / project.doc_id).write_text(project.text(), encoding="utf-8")
        folders[(project.kb, project.group)] = folder
    return folders
