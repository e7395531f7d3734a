"""Login names: one canonical form (NFKC + casefold) and a look-alike skeleton, so that
`ａｄｍｉｎ` (fullwidth), `Admin` and `admіn` (Cyrillic і) cannot sit beside `admin`.

What is covered (stated in docs/SECURITY.md): NFKC folds compatibility forms (fullwidth,
ligatures, superscripts, circled letters); casefold folds case (also ß -> ss); a login uses
letters of one script only (Latin with Cyrillic or Greek is refused); and two logins clash
when their skeletons are equal. The skeleton strips accents and maps the common Cyrillic,
Greek and Latin look-alikes of Latin letters below to their Latin twin, the digits 0 and 1 to
o and l, i to l, and the pairs rn -> m, vv -> w, cl -> d. It is a short hand-made table, not
the full Unicode confusables list (UTS #39).
"""
from __future__ import annotations

import unicodedata

from study.errors import InvalidInput

MIN_LEN, MAX_LEN = 2, 64
PUNCTUATION = "._-@"

# look-alikes (after casefold) -> the Latin letter they imitate
_LOOKALIKE = {
    # Cyrillic
    "а": "a", "б": "b", "в": "b", "г": "r", "д": "d", "е": "e", "ё": "e", "з": "3", "и": "u", "й": "u",
    "к": "k", "л": "n", "м": "m", "н": "h", "о": "o", "п": "n", "р": "p", "с": "c", "т": "t", "у": "y",
    "ф": "o", "х": "x", "ц": "u", "ч": "4", "ш": "w", "щ": "w", "ъ": "b", "ы": "bl", "ь": "b", "э": "e",
    "ю": "io", "я": "r", "є": "e", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "һ": "h", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "ӏ": "l", "ү": "y", "ҫ": "c", "ғ": "f", "ѵ": "v", "ѡ": "w",
    # Greek
    "α": "a", "β": "b", "γ": "y", "δ": "d", "ε": "e", "ζ": "z", "η": "n", "θ": "o", "ι": "i", "κ": "k",
    "λ": "a", "μ": "u", "ν": "v", "ξ": "e", "ο": "o", "π": "n", "ρ": "p", "σ": "o", "ς": "c", "τ": "t",
    "υ": "u", "φ": "o", "χ": "x", "ψ": "w", "ω": "w", "ϲ": "c", "ϳ": "j",
    # Latin and IPA look-alikes
    "ı": "i", "ɩ": "i", "ł": "l", "ƚ": "l", "ɫ": "l", "ø": "o", "ɵ": "o", "đ": "d", "ɗ": "d", "ħ": "h",
    "ɡ": "g", "ɑ": "a", "ʋ": "u", "ʏ": "y", "ɴ": "n", "ʀ": "r", "ꜱ": "s", "ᴅ": "d", "ᴋ": "k", "ᴍ": "m",
    "ᴏ": "o", "ᴘ": "p", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z", "ɪ": "i",
    # digits and letters that read alike in most fonts
    "0": "o", "1": "l", "i": "l", "|": "l",
}
_PAIRS = (("rn", "m"), ("vv", "w"), ("cl", "d"))
# scripts that one login may mix (Japanese writing uses all three)
_SCRIPT_GROUPS = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "CJK": "CJK"}


def normalize_login(login: object) -> str:
    """Canonical form of a login as typed: NFKC, casefold, surrounding blanks removed."""
    if not isinstance(login, str):
        return ""
    return unicodedata.normalize("NFKC", login).casefold().strip()


def _script(ch: str) -> str | None:
    """Script of a letter from its Unicode name (LATIN, CYRILLIC, GREEK, ...); None for others."""
    if not ch.isalpha():
        return None
    word = unicodedata.name(ch, "UNKNOWN").split(" ")[0]
    return _SCRIPT_GROUPS.get(word, word)


def check_login(login: object) -> str:
    """The canonical login, or InvalidInput for a login that may not be registered."""
    canon = normalize_login(login)
    if not MIN_LEN <= len(canon) <= MAX_LEN:
        raise InvalidInput(f"Logins are {MIN_LEN}-{MAX_LEN} letters, digits or {' '.join(PUNCTUATION)}.")
    for ch in canon:
        if ch in PUNCTUATION or ch.isdigit() and ch.isascii():
            continue
        if not ch.isalpha():
            raise InvalidInput(f"Logins are {MIN_LEN}-{MAX_LEN} letters, digits or {' '.join(PUNCTUATION)}.")
    scripts = {s for s in map(_script, canon) if s}
    if len(scripts) > 1:
        raise InvalidInput("A login uses the letters of one alphabet only (e.g. not Latin mixed with Cyrillic).")
    return canon


def login_skeleton(login: str) -> str:
    """What a login looks like: accents stripped, look-alike letters and digits mapped to one form."""
    base = unicodedata.normalize("NFD", normalize_login(login))
    base = "".join(ch for ch in base if unicodedata.category(ch) != "Mn")
    out = unicodedata.normalize("NFC", base)
    for _ in range(2):                  # twice: Cyrillic і -> i -> l, like the Latin i
        out = "".join(_LOOKALIKE.get(ch, ch) for ch in out)
    for a, b in _PAIRS:
        out = out.replace(a, b)
    return out


def clashing_login(candidate: str, existing: list[str]) -> str | None:
    """An existing login that looks like `candidate` (same skeleton), else None."""
    sk = login_skeleton(candidate)
    for name in existing:
        if login_skeleton(name) == sk:
            return name
    return None
