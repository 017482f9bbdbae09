"""The token estimate OpenAIEmbedder falls back on when no tokenizer of the served model is available."""

from __future__ import annotations

from retrieval.openai_embedder import estimate_tokens


def test_nothing_is_no_tokens() -> None:
    assert estimate_tokens("") == 0


def test_latin_text_is_a_token_per_three_characters_rounded_up() -> None:
    assert estimate_tokens("abc") == 1
    assert estimate_tokens("abcd") == 2
    assert estimate_tokens("Employees get 20 days of paid annual leave per year.") == 18


def test_each_cjk_character_is_a_token() -> None:
    assert estimate_tokens("员工每年享有二十天带薪年假") == 13
    assert estimate_tokens("VPN 密码") == 2 + 2  # "VPN " is four characters, then two Han


def test_it_grows_with_the_text() -> None:
    text = "Reset a forgotten VPN password in the self-service portal. 员工每年享有年假。"
    counts = [estimate_tokens(text[:n]) for n in range(len(text) + 1)]
    assert counts == sorted(counts)
