"""A sub-account's ``external_id`` (the partner's own id for its customer): what is refused and
how it is normalised, for the bodies that create one and the look-ups by ``?external_id=``."""

from __future__ import annotations

import re
import unicodedata

# Control (Cc), format (Cf: bidi overrides, zero-width joiners and spaces, BOM), surrogate (Cs),
# private-use (Co), unassigned (Cn) and line/paragraph separators (Zl, Zp): invisible or
# reorderable text that would let two customers look alike in a partner's dashboard.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties; unicodedata does not expose it): what
# renders as nothing, such as U+034F, the variation selectors (U+FE00.., U+E0100..) and the Hangul
# fillers (U+115F, U+1160, U+3164, U+FFA0); plus U+2800, the braille blank, which shows as a space.
_INVISIBLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
EXTERNAL_ID_MAX_LENGTH = 255


_INVISIBLE_CHAR = re.compile("[" + "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in _INVISIBLE) + "]")


def _refused_char(char: str) -> bool:
    category = unicodedata.category(char)
    return (
        category in _REFUSED_CATEGORIES
        or (category == "Zs" and char != " ")  # spaces that look like " " but are not
        or _INVISIBLE_CHAR.match(char) is not None
    )


def normalise_external_id(raw: str) -> str:
    """NFC-normalised and stripped; raises ValueError naming the problem for characters that are
    invisible, control, look like a space, or a combining mark with nothing to combine with."""
    value = unicodedata.normalize("NFC", raw).strip()
    if not value or len(value) > EXTERNAL_ID_MAX_LENGTH:
        raise ValueError(f"Must be 1 to {EXTERNAL_ID_MAX_LENGTH} characters.")
    if value.isascii() and value.isprintable():
        return value  # the common case: nothing invisible, no control character, no mark (on the mint path)
    for char in value:
        if _refused_char(char):
            raise ValueError(
                f"Must not contain control, invisible, space-like or text-direction characters (found U+{ord(char):04X})."
            )
    if unicodedata.category(value[0]).startswith("M"):
        raise ValueError(f"Must not start with a combining mark (found U+{ord(value[0]):04X}).")
    return value
