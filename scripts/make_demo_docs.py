"""Writes the binary demo documents in data/ (PDF, DOCX). Run once; the outputs are committed.

.venv/bin/python scripts/make_demo_docs.py
"""

from __future__ import annotations

from pathlib import Path

from docx import Document
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer

DATA = Path(__file__).resolve().parent.parent / "data"

EXPENSE_EN = [
    ("title", "Travel and Expense Policy"),
    (
        "p",
        "Northwind Robotics finance handbook. This policy explains which business expenses are "
        "reimbursed and how to claim them.",
    ),
    ("h", "1. Submitting expense reports"),
    (
        "p",
        "Expense reports must be submitted in the finance portal within 30 days of the date the "
        "expense was incurred. Reports submitted later need a written explanation from your "
        "department head and may be rejected.",
    ),
    (
        "p",
        "Attach an itemised receipt for every expense of 25 US dollars or more. Card slips without "
        "items are not accepted as receipts.",
    ),
    ("h", "2. Approval limits"),
    (
        "p",
        "Your line manager approves reports below 1,000 US dollars. Reports of 1,000 US dollars or "
        "more also need the approval of a director.",
    ),
    ("page", ""),
    ("h", "3. Travel"),
    (
        "p",
        "Book flights and hotels through the company travel portal. Economy class is the standard "
        "for flights shorter than six hours; business class may be booked for longer flights.",
    ),
    (
        "p",
        "The daily meal allowance is 60 US dollars for domestic travel and 90 US dollars for "
        "international travel. Alcohol is not reimbursed.",
    ),
    ("h", "4. Payment"),
    ("p", "Approved expenses are paid to your salary account within 10 business days."),
]

SECURITY_EN = [
    ("title", "IT Security Policy"),
    ("p", "This policy protects Northwind Robotics' systems and data. Every employee and contractor must follow it."),
    ("h", "Passwords and sign-in"),
    (
        "p",
        "Passwords must be at least 14 characters long and must not be reused across services. "
        "Multi-factor authentication is required for email, the VPN and every cloud service.",
    ),
    ("p", "Never share your password with anyone, including the IT service desk."),
    ("h", "Devices"),
    (
        "p",
        "Company laptops use full-disk encryption and receive security updates automatically. "
        "Do not install software from unknown sources.",
    ),
    (
        "p",
        "Report a lost or stolen laptop or phone to the IT service desk within one hour, so that "
        "the device can be locked and wiped remotely.",
    ),
    ("h", "Phishing"),
    (
        "p",
        "Forward suspicious emails to phishing@northwind.example and then delete them. Do not "
        "click links or open attachments in suspicious emails.",
    ),
    ("h", "Remote access"),
    (
        "p",
        "Connect to internal systems only through the company VPN. Public Wi-Fi may be used only "
        "with the VPN switched on.",
    ),
]

SECURITY_ZH = [
    ("title", "信息安全规范"),
    ("p", "本规范适用于诺斯温机器人公司全体员工及外包人员。"),
    ("h", "密码与登录"),
    ("p", "密码长度不少于14位，不同系统不得使用相同密码。邮箱、VPN 和所有云服务必须开启多因素认证。"),
    ("p", "任何情况下不得向他人透露密码，包括IT服务台。"),
    ("h", "设备管理"),
    ("p", "公司笔记本电脑启用全盘加密并自动安装安全更新。禁止安装来源不明的软件。"),
    ("p", "笔记本电脑或手机丢失、被盗，须在1小时内报告IT服务台，以便远程锁定并清除数据。"),
    ("h", "钓鱼邮件"),
    ("p", "收到可疑邮件请转发至 phishing@northwind.example 后删除，不要点击其中的链接或附件。"),
]


def write_pdf(path: Path, blocks: list[tuple[str, str]]) -> None:
    styles = getSampleStyleSheet()
    story: list[object] = []
    for kind, text in blocks:
        if kind == "title":
            story.append(Paragraph(text, styles["Title"]))
        elif kind == "h":
            story.append(Paragraph(text, styles["Heading2"]))
        elif kind == "page":
            story.append(PageBreak())
        else:
            story.append(Paragraph(text, styles["BodyText"]))
            story.append(Spacer(1, 6))
    doc = SimpleDocTemplate(str(path), pagesize=A4, title=blocks[0][1], author="Northwind Robotics")
    doc.build(story)  # type: ignore[arg-type]


def write_docx(path: Path, blocks: list[tuple[str, str]]) -> None:
    doc = Document()
    doc.core_properties.title = blocks[0][1]
    for kind, text in blocks:
        if kind == "title":
            doc.add_heading(text, level=0)
        elif kind == "h":
            doc.add_heading(text, level=1)
        else:
            doc.add_paragraph(text)
    doc.save(str(path))


def main() -> None:
    write_pdf(DATA / "expense-policy.pdf", EXPENSE_EN)
    write_docx(DATA / "it-security-policy.docx", SECURITY_EN)
    write_docx(DATA / "it-security-policy-zh.docx", SECURITY_ZH)


if __name__ == "__main__":
    main()
