"""Words for generation and LoRA training: instance token, class noun, prompts, captions and tags.

Decisions (see also ``services/captioner/stage.py``):

* **Instance token**: 14 lowercase letters spelling, in base 26, the first 72 bits of
  ``sha256("skuforge-instance-token" + sku_id)`` reduced mod 26^14 (65.8 bits). Letters only,
  because CLIP-style BPE gives digits and punctuation meanings of their own, and a random
  14-letter string is no word, so the tokenizer splits it into rare sub-word pieces with no
  prior, which is what an instance token needs. 65.8 bits make a collision among a million
  SKUs a ~1e-8 event. It depends only on the sku_id: stable across restarts and machines.
* **Class noun**: the SKU's category as a noun phrase ("soda can", "energy drink can"), not
  reduced to the packaging word ("can"): class-prior images of "a photo of a soda can" are what
  the LoRA must stay close to, and they differ from "a can" (paint, tin). Lowercased, leading
  article dropped, accents spelled plainly ("crème" → "creme", "ø" → "o"), an apostrophe inside a
  word dropped ("men's" → "mens"), a character that shows nothing dropped ("cho\\u200bcolate" →
  "chocolate"), only ASCII letters, digits, spaces, '-' and '&' kept. A plural
  noun ("soft drinks") takes no article in the class prompt and the captions: "a photo of soft drinks".
  At most ``MAX_CLASS_NOUN_CHARS``, cut at a word, so its prompts fit the contract; so is a tag.
* **Captions** say only what was measured (colours, packaging shape, view) plus the retailer's
  metadata; the instance token stays in the prompts, so a caption reads as plain English. Captions
  and tags leave out the metadata's characters that show nothing (a zero-width space, a byte-order
  mark: ``_visible_text``), so the tag of a brand "ACME\\u200b" is "acme".
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from schemas.common import SkuMetadata, letter_start
from schemas.events import MAX_CAPTION_CHARS, MAX_PHRASE_CHARS
from shared.captioning.attributes import ShapeName

__all__ = [
    "NEGATIVE_PROMPT",
    "SHAPE_PHRASES",
    "SkuPrompts",
    "article",
    "class_noun",
    "compose_caption",
    "compose_tags",
    "declared_shape",
    "instance_token",
    "merge_sentence",
    "plain_spelling",
    "sku_prompts",
    "with_article",
]

TOKEN_LETTERS: Final = 14
_TOKEN_SALT: Final = b"skuforge-instance-token\x1f"
_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz"
# The longest class noun: its instance prompt ("a photo of <token> <noun>") is a phrase of the
# contract (MAX_PHRASE_CHARS). A category is at most 100 characters, but spelled plainly it can grow
# ("ß" is "ss", "Ⅷ" "viii"): such a SKU's event broke its own contract, and every retry matted it again.
MAX_CLASS_NOUN_CHARS: Final = MAX_PHRASE_CHARS - len("a photo of  ") - TOKEN_LETTERS

NEGATIVE_PROMPT: Final = (
    "blurry, low quality, deformed packaging, warped label, distorted text, misspelled brand, "
    "wrong colours, extra products, duplicate product, cropped product, watermark, cartoon, illustration"
)
# How a caption spells each measured packaging shape; "other" claims nothing.
SHAPE_PHRASES: Final[dict[str, str]] = {
    "can": "cylindrical can",
    "bottle": "bottle with a narrow neck",
    "box": "rectangular box",
    "pouch": "flexible stand-up pouch",
    "jar": "wide jar with a lid",
    "produce": "loose fresh produce, no packaging",
    "other": "",
}
# Words that name a colour: a VLM's sentence may not contradict the measured ones (packaging: _SHAPE_WORDS).
_COLOUR_WORDS: Final = frozenset(
    {
        *("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"),
        *("grey", "gray", "beige", "gold", "golden", "silver", "violet", "magenta", "cyan", "teal"),
        *("navy", "maroon", "tan", "cream"),
    }
)


# Packaging a category names, by its nouns: what the product's owner says beats a measurement of a
# mask, which a torn mask or an odd view can mislead ("juice carton" measured as loose produce).
_DECLARED_PACKAGING: Final[dict[str, ShapeName]] = {
    **{word: "box" for word in ("carton", "cartons", "box", "boxes")},
    **{word: "can" for word in ("can", "cans", "tin", "tins")},
    **{word: "bottle" for word in ("bottle", "bottles")},
    **{word: "jar" for word in ("jar", "jars", "tub", "tubs")},
    **{word: "pouch" for word in ("pouch", "pouches", "bag", "bags", "packet", "packets")},
}
# A VLM's sentence reads packaging words as a category does: each names the shape it is ("tins", "a
# tub", "cartons" too, which passed into captions of other shapes).
_SHAPE_WORDS: Final[dict[str, str]] = dict(_DECLARED_PACKAGING)
# How a caption spells a shape several times: "two tins of beans" of a box is "two boxes of beans".
_PLURAL_SHAPES: Final[dict[str, str]] = {
    "can": "cans",
    "bottle": "bottles",
    "box": "boxes",
    "pouch": "pouches",
    "jar": "jars",
    "product": "products",
    "pack": "packs",
}
_DECLARED_PRODUCE: Final = frozenset(
    {"fruit", "fruits", "vegetable", "vegetables", "veg", "veggies", "produce"}
)
# A packaging participle names the packaging ("canned vegetables" are in a can) ...
_DECLARED_PACKED: Final[dict[str, ShapeName]] = {
    **{word: "can" for word in ("canned", "tinned")},
    **{word: "bottle" for word in ("bottled",)},
    **{word: "jar" for word in ("jarred",)},
    **{word: "box" for word in ("boxed",)},
    **{word: "pouch" for word in ("bagged", "packaged", "packed")},
}
# ... and a processing word says the fruit is not loose and fresh, without saying in what.
_PROCESSED: Final = frozenset({"frozen", "dried", "pickled", "preserved", "candied", "sliced", "chopped"})
# A packaging word before one of these says what the product is for, not what it comes in: a "can
# opener" is no can (its caption said "cylindrical can", and its mask's dents were filled as a can's).
_FOR_PACKAGING: Final = frozenset(
    {
        *("opener", "openers", "brush", "brushes", "clip", "clips", "cutter", "cutters", "lid", "lids"),
        *("cap", "caps", "stopper", "stoppers", "holder", "holders", "rack", "racks", "foil", "candle"),
        "candles",
    }
)


def declared_shape(category: str) -> ShapeName | None:
    """The packaging ``category`` names, if it names one: the head of the phrase ("juice carton" is
    a carton, "bottle of water" a bottle: the last packaging noun before any "of"), else ``produce``
    when the head itself is fruit or vegetables ("fresh fruit", "fruit and vegetables"; not "fruit
    juice" or "vegetable oil", where the word only says what the product is made of), unless a word
    says it is packed or processed: "canned vegetables" are a can, "frozen vegetables" say nothing of
    their packaging (the masks decide); None when it says nothing about packaging ("sour cream"), or
    names it only as what a tool or accessory is for ("can opener", "bottle brush", "jar lids")."""
    words = re.findall(r"[a-z]+", _visible_text(category).lower())
    if not words:  # no Latin word ("飲料", "330"): none names a packaging, the masks decide
        return None
    # The packaging word goes with the tool after it: "can opener" is read as "opener".
    words = [word for word, after in zip(words, [*words[1:], ""], strict=True) if after not in _FOR_PACKAGING]
    head = words[: words.index("of")] if "of" in words else words
    for candidates in (head, words):
        packaging = [_DECLARED_PACKAGING[word] for word in candidates if word in _DECLARED_PACKAGING]
        if packaging:
            return packaging[-1]
    packed = [_DECLARED_PACKED[word] for word in head if word in _DECLARED_PACKED]
    if packed:
        return packed[-1]
    if head and head[-1] in _DECLARED_PRODUCE and not _PROCESSED.intersection(head):
        return "produce"
    return None


def instance_token(sku_id: str) -> str:
    """The SKU's rare instance token: 14 lowercase letters derived from the sha256 of its id."""
    digest = hashlib.sha256(_TOKEN_SALT + sku_id.encode("utf-8")).digest()
    number = int.from_bytes(digest[:9], "big") % (len(_ALPHABET) ** TOKEN_LETTERS)
    letters = []
    for _ in range(TOKEN_LETTERS):
        number, digit = divmod(number, len(_ALPHABET))
        letters.append(_ALPHABET[digit])
    return "".join(reversed(letters))


# Letters NFKD does not take apart into a plain letter and an accent: spelled as they are read in
# English text, not cut out ("smørrebrød" read "sm rrebr d", "Ærø cheese" "r cheese").
_PLAIN_LETTERS: Final = str.maketrans(
    {
        **{"æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L"},
        **{"đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "TH", "ħ": "h", "Ħ": "H"},
        **{"\u0131": "i", "ŧ": "t", "Ŧ": "T", "ß": "ss"},  # the dotless i
    }
)


def plain_spelling(text: str) -> str:
    """``text`` with its accented letters spelled plainly: "Crème" → "Creme", "Smørrebrød" →
    "Smorrebrod", "Æ" → "AE" (case kept; other characters left as they are)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char)).translate(_PLAIN_LETTERS)


# Characters that show nothing and shape nothing: the zero-width space, the word joiner and the invisible
# operators, the byte-order mark, the soft hyphen, the directional marks. Pasted into metadata ("ACME\u200b"),
# the contract takes them (they are text in a Thai or Hebrew name), but a tag "acme\u200b" matched no
# "acme", and one inside a category's word split it ("cho colate").
_SHOWS_NOTHING: Final = re.compile("[\u00ad\u200b\u200e\u200f\u2060-\u2064\ufeff]")
# The joiners (ZWNJ, ZWJ) shape what stands either side in a script that joins letters or an emoji
# ("क्\u200dष", a family emoji): kept there; beside a space, an ASCII character or a Latin letter, or at
# an end, they join nothing and go.
_JOINERS: Final = "\u200c\u200d"


def _shapes(char: str) -> bool:
    """Whether a joiner beside ``char`` can shape it (see ``_JOINERS``)."""
    if not char or char.isspace() or char.isascii():
        return False
    return "LATIN" not in unicodedata.name(char, "")


def _visible_text(text: str) -> str:
    """``text`` without the characters that show nothing (``_SHOWS_NOTHING``), nor a joiner that joins
    nothing: "ACME\\u200b" is "ACME", "Cho\\u200bcolate" "Chocolate"; a joiner within Devanagari or an
    emoji sequence stays."""
    kept = _SHOWS_NOTHING.sub("", text)
    return "".join(
        char
        for index, char in enumerate(kept)
        if char not in _JOINERS or (_shapes(kept[index - 1 : index]) and _shapes(kept[index + 1 : index + 2]))
    )


# An apostrophe (typed or typographic) inside a word: a possessive or a contraction, dropped, not a space.
_INNER_APOSTROPHE: Final = re.compile(r"(?<=[a-z0-9])['\u2019\u2018\u02bc](?=[a-z])")


def class_noun(category: str, *, fallback: str = "product") -> str:
    """The class noun phrase of a category: lowercased, leading article dropped, plain characters only.

    Accented letters are spelled plainly ("crème fraîche" → "creme fraiche", "ß" → "ss", "ø" → "o":
    ``plain_spelling``) rather than cut out, which would split a word into fragments ("cr me fra
    che"); so is a possessive ("men's deodorant" → "mens deodorant", not "men s deodorant").
    """
    plain = _INNER_APOSTROPHE.sub("", plain_spelling(_visible_text(category).casefold()))
    words = re.sub(r"[^a-z0-9&\- ]+", " ", plain).split()
    if words and words[0] in ("a", "an", "the"):
        words = words[1:]
    if not any(char.isalpha() for word in words for char in word):
        # Only digits left ("Молоко 3,2%" gives "3 2"): that names no class, the fallback does.
        return fallback
    return _cut_at_word(" ".join(words), MAX_CLASS_NOUN_CHARS)


def _cut_at_word(text: str, limit: int) -> str:
    """``text``, or, when longer than ``limit``, its words that fit (a single word over it cut, but not
    between a letter and its accent: ``letter_start``); a ``limit`` of 0 leaves nothing, and a negative
    one is refused: a slice to it counted from the end ("abc" cut to -1 was "ab")."""
    if limit < 0:
        raise ValueError(f"a caption cut to {limit} characters: the limit is 0 or more")
    if len(text) <= limit:
        return text
    if " " in text[:limit]:
        return text[: limit + 1].rsplit(" ", 1)[0].rstrip()
    return text[: letter_start(text, limit)].rstrip()


# The article goes by the first sound, not the first letter: a vowel letter read as "you" or "w"
# ("a unicorn-shaped cake", "a one-litre bottle", "a European cheese") and a silent h ("an hour").
# Prefixes, not a dictionary: "uni" but not "unin"/"unim"/"unid" (an uninspired, unidentified ...).
_A_BEFORE: Final = ("eu", "ewe", "uni", "use", "usu", "ute", "uti", "uk", "one", "once")
_NOT_A_BEFORE: Final = ("unin", "unim", "unid")
_AN_BEFORE: Final = ("hour", "honest", "honour", "honor", "heir")
# Letters whose spoken name starts with a vowel sound: an initialism goes by them ("an SD card").
_VOWEL_SOUNDING_LETTERS: Final = "aefhilmnorsx"


def _is_initialism(word: str) -> bool:
    """Whether a word is spelled letter by letter: written in capitals ("MRI"), or, as a class noun
    arrives lowercased, with no vowel (or y) after its first letter ("uht", "bbq", "sd")."""
    letters = "".join(char for char in word if char.isalpha())
    if len(letters) < 2:
        return False
    return letters.isupper() or not any(char in "aeiouy" for char in letters[1:].lower())


def _reads_as_an(digits: str) -> bool:
    """Whether a number is said with a vowel first: 8, 80-89, 800..., 11, 18, 11 000, 18 000."""
    return digits.startswith("8") or (len(digits) % 3 == 2 and digits[:2] in ("11", "18"))


def article(phrase: str) -> str:
    """'a' or 'an' for ``phrase``, by how its first word is said: "an apple", "a unicorn-shaped cake",
    "a one-litre bottle", "an hour", "a UHT milk", "an SD card", "an 8-pack", "an x-ray" (the cases that
    occur in categories, colours and a VLM's sentences; no pronouncing dictionary)."""
    # Said as its plain spelling: "an éclair", "an Ærø cheese" (the accented letter was no letter here).
    first = plain_spelling(phrase.split()[0]) if phrase.split() else ""
    digits = re.match(r"\d+", first)
    if digits:
        return "an" if _reads_as_an(digits.group()) else "a"
    word = re.split(r"[^A-Za-z]", first)[0]  # "one-litre" is said "one" first
    lower = word.lower()
    if len(word) == 1 and first[1:2] == "-":  # a letter is said by its name: "an x-ray", "a u-bend"
        return "an" if lower in _VOWEL_SOUNDING_LETTERS else "a"
    if _is_initialism(word) and lower != "urn":  # the one vowel-less word a shop sells
        return "an" if lower[:1] in _VOWEL_SOUNDING_LETTERS else "a"
    if lower.startswith(_AN_BEFORE):
        return "an"
    if lower.startswith(_A_BEFORE) and not lower.startswith(_NOT_A_BEFORE):
        return "a"
    return "an" if lower[:1] in ("a", "e", "i", "o", "u") else "a"


def _names_several(phrase: str) -> bool:
    """Whether a noun phrase is plural by its last word ("soft drinks", "jalapeno peppers"), which
    takes no article; not the -ss, -us, -is of one glass, hummus, couscous, asparagus or citrus."""
    words = phrase.split()
    return bool(words) and words[-1].endswith("s") and not words[-1].endswith(("ss", "us", "is"))


def with_article(phrase: str) -> str:
    """``phrase`` after its indefinite article: "a soda can", "an energy drink can", but "soft drinks"
    (a category is often plural; "a photo of a soft drinks" was every such SKU's class prompt)."""
    return phrase if _names_several(phrase) else f"{article(phrase)} {phrase}"


@dataclass(frozen=True)
class SkuPrompts:
    """The SKU-level words the generator and the LoRA trainer use."""

    instance_token: str
    class_noun: str
    instance_prompt: str
    class_prompt: str
    negative_prompt: str


def class_prompt(noun: str) -> str:
    """The prompt of a class noun's prior images ("a photo of an aubergine", "a photo of soft drinks")."""
    return f"a photo of {with_article(noun)}"


def sku_prompts(sku: SkuMetadata) -> SkuPrompts:
    """Instance token, class noun and the three prompts of a SKU."""
    token = instance_token(sku.sku_id)
    noun = class_noun(sku.category)
    return SkuPrompts(
        instance_token=token,
        class_noun=noun,
        instance_prompt=f"a photo of {token} {noun}",
        class_prompt=class_prompt(noun),
        negative_prompt=NEGATIVE_PROMPT,
    )


def _colour_phrase(colours: Sequence[str]) -> str:
    if not colours:
        return ""
    if len(colours) == 1:
        return colours[0]
    return ", ".join(colours[:-1]) + " and " + colours[-1]


def compose_caption(sku: SkuMetadata, colours: Sequence[str], shape: str, view: str) -> str:
    """A detailed caption of one photo from its measurements and the SKU's metadata.

    e.g. "a photo of a red and white soda can by Fizzo, Fizzo Zero Cherry, Fizzo Zero series,
    cylindrical can, front view"; at most ``MAX_CAPTION_CHARS``, cut at a word. Blank metadata says
    nothing (a brand or series of spaces read "by  ," and "  series"), and a series that says so itself
    ("Pro Series") is not "Pro Series series".
    """
    noun = class_noun(sku.category)
    # metadata.json is the retailer's: padding and inner runs of spaces are not part of the words, and
    # an accent typed apart from its letter (NFD, as macOS writes names) is one character with it.
    brand, name, series = (_composed(text) for text in (sku.brand, sku.name, sku.series))
    described = " ".join(part for part in (_colour_phrase(colours), noun) if part)
    parts = [f"a photo of {with_article(described)}" + (f" by {brand}" if brand else "")]
    # A name that is the category ("Crème Fraîche" of crème fraîche, the noun "creme fraiche") or the
    # brand says nothing new.
    if name and class_noun(name, fallback="") != noun and name.casefold() != brand.casefold():
        parts.append(name)
    if series:
        parts.append(series if series.split()[-1].lower() == "series" else f"{series} series")
    if SHAPE_PHRASES.get(shape):
        parts.append(SHAPE_PHRASES[shape])
    if view:
        parts.append(view)
    # Every field at its limit fits the event's caption limit; a longer field, or more colours, must not
    # make the captioner break its own contract: cut at a word, never after a comma.
    return _cut_at_word(", ".join(parts), MAX_CAPTION_CHARS).rstrip(",")


def _composed(text: str) -> str:
    """``text`` in composed form (NFC: "é" one character, however it was typed), single-spaced, without
    the characters that show nothing (``_visible_text``: "ACME\\u200b" is "ACME")."""
    return " ".join(unicodedata.normalize("NFC", _visible_text(text)).split())


def _tag(text: str) -> str:
    """One auto-tagger style tag: lowercase words (composed, ``_composed``), no commas; at most
    ``MAX_PHRASE_CHARS``, cut at a word: a 200-character name grows lowercased ("İ" is "i" and a
    combining dot), and its tag broke the event's contract."""
    return _cut_at_word(_composed(re.sub(r"[,\n\r\t]+", " ", text.lower())), MAX_PHRASE_CHARS)


def compose_tags(sku: SkuMetadata, colours: Sequence[str], shape: str, view: str) -> list[str]:
    """Comma-separable lowercase tags: colours, shape, class noun, brand, series, name, view."""
    candidates = [
        *colours,
        *(f"{colour} {shape}" for colour in colours[:1] if shape != "other"),
        shape if shape != "other" else "",
        class_noun(sku.category),
        sku.brand,
        sku.series,
        sku.name,
        view,
        "product photo",
    ]
    tags: list[str] = []
    for candidate in candidates:
        tag = _tag(candidate)
        if tag and tag not in tags:
            tags.append(tag)
    return tags


# Words after which a colour word is a noun ("an orange on a table", "sour cream and jam"), not a
# colour said of the next word.
_NOT_MODIFIED: Final = frozenset(
    {
        *("on", "in", "at", "by", "with", "of", "from", "to", "near", "next", "and", "or", "is", "are"),
        # An article starts another phrase: "an orange, a box" is the fruit ("an a box" was left).
        *("for", "a", "an", "the"),
    }
)


# Colour words that are also things a sentence may be about.
_COLOUR_NOUNS: Final = frozenset({"orange", "cream", "gold", "silver", "navy", "tan"})
# Foods and drinks a colour word before names a kind of ("orange juice", "red wine", "black beans"), not
# the colour of the pack: "a bottle of orange juice" of a red box lost its juice's name. Not produce,
# whose colour is the product's own and measured ("a red apple").
_NAMED_BY_COLOUR: Final = frozenset(
    {
        *("juice", "juices", "wine", "wines", "tea", "teas", "coffee", "bread", "rice", "sugar", "vinegar"),
        *("chocolate", "chocolates", "bean", "beans", "lentil", "lentils", "olive", "olives", "pesto"),
        *("curry", "pudding"),
    }
)


# What "black and white" before these says is of the picture (BLIP's words for a greyscale photo), not
# of the product: "a black and white photo of a bottle" of a bottle measured white read "a white photo".
_OF_THE_PICTURE: Final = frozenset(
    {"photo", "photos", "photograph", "photographs", "picture", "pictures", "image", "images"}
)


def _of_the_picture(words: Sequence[str], index: int) -> bool:
    """Whether the colour word at ``index`` is part of "black and white" before a word for the picture."""
    for start in (index, index - 2):
        if start >= 0 and words[start : start + 3] == ["black", "and", "white"]:
            return start + 3 < len(words) and words[start + 3] in _OF_THE_PICTURE
    return False


def _modifies(words: Sequence[str], index: int, name: str = "") -> bool:
    """Whether the colour word at ``index`` says a colour ("a red box", "red and white box", a cut-off
    "a photo of a blue"), not names a thing: before a food or drink it names a kind of ("orange juice",
    "red wine") or with the next word as the class noun has them ("white asparagus"); an orange or
    cream at the end of the sentence, before a preposition, or after "sour"/"ice" is the fruit or the
    dairy product."""
    following = words[index + 1] if index + 1 < len(words) else None
    if _names_a_kind(words, index, name) or _of_the_picture(words, index):
        return False
    joined = words[index + 2] if following in ("and", "or") and index + 2 < len(words) else None
    if joined in _COLOUR_WORDS and _names_a_kind(words, index + 2, name):
        return False  # "red and white wine": red wine and white wine
    if words[index] not in _COLOUR_NOUNS:
        return True
    if index > 0 and words[index - 1] in ("sour", "ice", "whipped"):
        return False  # cream
    if following is None:
        return False
    if following in ("and", "or"):
        return joined in _COLOUR_WORDS
    return following not in _NOT_MODIFIED


def _names_a_kind(words: Sequence[str], index: int, name: str) -> bool:
    """Whether the colour word at ``index`` is part of a food's or drink's name with the next word
    ("red wine"; "white asparagus" when the class noun says so)."""
    following = words[index + 1] if index + 1 < len(words) else None
    return following in _NAMED_BY_COLOUR or f" {words[index]} {following} " in f" {name} "


# Words that name something else on their own but one colour with the colour after them ("lemon
# yellow", "sky blue"): dropped with that colour, or "a lemon yellow box" was left "a lemon box".
_SHADE_NOUNS: Final = frozenset(
    {"lemon", "lime", "sky", "forest", "mint", "olive", "sea", "ice", "blood", "cherry", "rose", "brick"}
)
# Words that join or shade colours in a hyphenated compound: "blue-and-white", "dark-red".
_COLOUR_JOINERS: Final = frozenset({"and", "or", "dark", "light", "pale", "bright", "deep"})


def _sentence_words(sentence: str, measured: set[str]) -> tuple[list[str], set[int]]:
    """The sentence's lowercased words, with a hyphenated colour compound that names an unmeasured
    colour ("blue-and-white", "dark-red") split into its words, so each colour is judged on its own;
    a bare hyphen (BLIP's decoder spaces them out: "blue - and - white") is left out. And the indices
    of the words a comma follows ("apples, pears", BLIP's "apples , pears")."""
    words: list[str] = []
    commas: set[int] = set()
    text = unicodedata.normalize("NFC", sentence).lower()
    # Letters of any alphabet: "[A-Za-z]" cut "crème fraîche" into "cr me fra che". A comma between
    # digits is part of the number ("1,000 ml", "3,2%"), not a list's.
    matches = list(re.finditer(r"(?:[^\W_]|['&-]|(?<=\d),(?=\d))+", text))
    for match, after in zip(matches, [*matches[1:], None], strict=True):
        word = match.group()
        parts = [part for part in word.split("-") if part]
        colours = {part for part in parts if part in _COLOUR_WORDS}
        if (
            len(parts) > 1
            and colours - measured
            and set(parts) <= _COLOUR_WORDS | _COLOUR_JOINERS | _SHADE_NOUNS
        ):
            words.extend(parts)
        elif parts:
            words.append(word)
        if parts and "," in text[match.end() : after.start() if after is not None else len(text)]:
            commas.add(len(words) - 1)
    return words, commas


# "can" is the verb after a pronoun ("you can see") or before a verb or an adverb ("can be opened",
# "can also"); the noun follows an article or a noun ("a can", "soda can", "a can, not a bottle") and
# comes before prepositions and nouns. "that" is left out: "that can of soup" is the noun.
_BEFORE_NOUN_CAN: Final = frozenset({"a", "an", "the", "this", "each", "every", "per", "one"})
_CAN_SUBJECTS: Final = frozenset({"i", "you", "we", "they", "he", "she", "it", "which", "who"})
_AFTER_VERB_CAN: Final = frozenset(
    {
        *("be", "not", "see", "hold", "fit", "help", "make", "use", "find", "have", "get", "read", "tell"),
        *("keep", "store", "contain", "last", "serve", "look", "give", "go", "come", "stay", "also"),
        *("only", "easily", "clearly", "still", "just", "really", "barely", "hardly", "always", "never"),
        *("often", "usually", "even", "probably", "possibly", "certainly"),
    }
)


def _verb_can(words: Sequence[str], index: int) -> bool:
    """Whether the word at ``index`` is the verb "can" ("you can see", "it can be opened"), which
    names no packaging."""
    if index >= len(words) or words[index] != "can":
        return False
    before = words[index - 1] if index > 0 else ""
    after = words[index + 1] if index + 1 < len(words) else ""
    return before not in _BEFORE_NOUN_CAN and (before in _CAN_SUBJECTS or after in _AFTER_VERB_CAN)


def merge_sentence(caption: str, sentence: str, colours: Sequence[str], shape: str, *, noun: str = "") -> str:
    """Append a vision-language model's sentence to a caption, minus any claim the measurements refute.

    Colour words not among the measured colours are dropped where they say a colour ("a red box", the
    "blue" of "a blue-and-white box"), with the "and" or "or" joining them to a colour kept ("a yellow
    and blue bag" of a yellow bag is "a yellow bag"), with a shading noun before them ("a lemon yellow
    box" is "a box"), not where they are a noun ("sour cream", "an orange on a table"), part of a
    name ("orange juice", "red wine", "white asparagus" when the class ``noun`` says so) or said of the
    picture ("a black and white photo of a bottle": a greyscale photo); a packaging word naming another
    shape becomes the measured one, plural if it was ("two tins" of a box are "two boxes"; the verb "can"
    is none: "you can see", "it can be opened"; two in a row are one: "a tin can" of a bottle is "a
    bottle", but not across a comma: "cans, jars"; "product" when the shape is unknown, "pack" for a
    container there: "a can of beans" is "a pack of beans"; dropped with its article and "of" ("full
    of") for loose produce; not before a tool: "a bottle opener"; of a container only the container,
    what it holds stays: "a box of cans" or "a box full of cans" of a box is not "a box of boxes", and
    of a can it is "cans", not "a can of cans"): the attribute captioner is authoritative for both. An article
    before a word dropped or replaced is redone for the word now after it, or goes when that is another
    article ("a red, a blue box" of a blue box is "a blue box"); the model's others stay, and
    its commas between words kept ("apples, pears and plums"). What is
    left (scene, objects, text the model read) is appended after a comma, cut at a word where the two
    together would pass ``MAX_CAPTION_CHARS`` (never after a glue word: "in a"). An empty sentence, or
    one left with only glue words, adds nothing.
    """
    measured = {colour.lower() for colour in colours}
    words, commas = _sentence_words(sentence, measured)
    contents = _contents(words)
    kept: list[str] = []
    origins: list[int] = []  # the index in ``words`` of each word kept
    # Indices in ``words`` of the colours dropped: a comma before one goes with it ("a red, white box").
    dropped_colours: set[int] = set()
    # Indices in ``kept`` of the articles before a word dropped or replaced: "an orange box" is "a can".
    # Only those are redone: ``article`` misses cases ("an x-ray"), and the model had the rest right.
    retold: set[int] = set()
    resume = 0  # the first word after those the previous drop takes with it ("and", "full of")
    for index, lower in enumerate(words):
        following = words[index + 1] if index + 1 < len(words) else None
        if index < resume:
            continue
        if (
            lower in _COLOUR_WORDS
            and lower not in measured
            and not (lower == "gray" and "grey" in measured)
            and _modifies(words, index, noun)
        ):
            if (
                following is not None
                and index > 0
                and words[index - 1] in _SHADE_NOUNS
                and kept[-1:] == [words[index - 1]]
            ):
                kept.pop()  # "lemon yellow" is one colour
                dropped_colours.add(origins.pop())
            if kept and kept[-1] in ("a", "an"):
                retold.add(len(kept) - 1)
            if (
                index >= 2
                and words[index - 1] in ("and", "or")
                and kept[-2:] == words[index - 2 : index]
                and words[index - 2] in _COLOUR_WORDS
                and _modifies(words, index - 2, noun)
            ):
                # "yellow and blue bag" of a yellow one: "yellow and bag" was left. Only after a colour said
                # as one: in "sour cream and green onion" the "and" joins two foods.
                kept.pop()
                origins.pop()
            resume = index + 2 if following in ("and", "or") else index + 1  # "red and white box"
            dropped_colours.add(index)
            continue
        if (
            lower in _SHAPE_WORDS
            and not _verb_can(words, index)
            and _SHAPE_WORDS[lower] != shape
            and (index not in contents or shape == "produce")
            and following not in _FOR_PACKAGING
        ):
            start = _contents_start(words, index)
            held = words[start] if start is not None and start < len(words) else ""
            if shape == "produce" or _SHAPE_WORDS.get(held) == shape:
                # Loose produce has no packaging: "a bag of oranges" is "oranges", not "a produce of"; a
                # container of the measured packaging is that packaging: "cans", not "a can of cans".
                if kept and kept[-1] in ("a", "an", "the"):
                    retold.discard(len(kept) - 1)
                    kept.pop()
                    origins.pop()
                resume = start if start is not None else index + 1
                continue
            if following in _SHAPE_WORDS and index not in commas and not _verb_can(words, index + 1):
                # "a tin can" is one packaging: the word after says it ("a bottle bottle" was left). Not
                # across a comma: "cans, jars" are two things of a list ("boxes" alone lost one).
                if kept and kept[-1] in ("a", "an"):
                    retold.add(len(kept) - 1)
                continue
            # Every packaging word ends in "s" only when plural ("tins", "boxes"; "box", "can" do not).
            measured_word = shape
            if shape == "other":
                # Of an unknown shape a container is "a pack of beans", not "a product of beans".
                measured_word = "pack" if start is not None else "product"
            lower = _PLURAL_SHAPES[measured_word] if lower.endswith("s") else measured_word
            if kept and kept[-1] in ("a", "an"):
                retold.add(len(kept) - 1)
        kept.append(lower)
        origins.append(index)
    # Dropping or replacing a word can leave "an can": those articles follow the word now after them. One
    # left before another article goes: "a red, a blue box" of a blue box was "an a blue box".
    doubled = {index for index in retold if index + 1 < len(kept) and kept[index + 1] in ("a", "an", "the")}
    for index in retold - doubled:
        if index + 1 < len(kept):
            kept[index] = article(kept[index + 1])
    kept = [word for position, word in enumerate(kept) if position not in doubled]
    origins = [origin for position, origin in enumerate(origins) if position not in doubled]
    if not set(kept) - _GLUE_WORDS:
        return caption
    # Long metadata and a long sentence together passed the event's caption limit, and the captioner's
    # event broke its own contract: the sentence is cut at a word to fit (captions that fit are unchanged).
    room = MAX_CAPTION_CHARS - len(caption) - len(", ")
    # A comma stays between the words it parted ("apples, pears and plums"), not before a colour dropped.
    parted = {origin for origin in commas if origin + 1 not in dropped_colours and origin < origins[-1]}
    whole = " ".join(
        f"{word}," if origin in parted else word for word, origin in zip(kept, origins, strict=True)
    )
    added = _cut_at_word(whole, max(room, 0))
    if added != whole:
        # Cut after a glue word, the prompt ended in a dangling "... beside it in a": cut before it.
        words = added.split()
        while words and words[-1].rstrip(",") in _GLUE_WORDS:
            words.pop()
        added = " ".join(words).rstrip(",")
    return f"{caption}, {added}" if added else caption


# Words for what holds the product besides the packaging words ("a pack of bottles", "a six-pack of
# cans"): what follows their "of" is what they hold, not the packaging.
_CONTAINER_WORDS: Final = frozenset(
    {
        *_SHAPE_WORDS,
        *("pack", "packs", "package", "packages", "multipack", "multipacks", "case", "cases", "crate"),
        *("crates", "tray", "trays"),
    }
)
# The words between a container and what it holds: "a box of cans", "a box full of cans".
_CONTENTS_JOINTS: Final[tuple[tuple[str, ...], ...]] = (
    ("of",),
    ("full", "of"),
    ("filled", "with"),
    ("packed", "with"),
    ("containing",),
)
# Words that end the phrase of what a container holds: what follows is said of something else ("a box
# of cans next to a bottle", "a bag of crisps and a bottle").
_CONTENTS_END: Final = frozenset(
    {
        *("a", "an", "the", "on", "in", "at", "by", "with", "from", "to", "near", "next", "beside"),
        *("behind", "under", "over", "against", "inside", "is", "are", "for", "that", "sitting"),
        *("standing", "lying"),
    }
)


def _contents_start(words: Sequence[str], index: int) -> int | None:
    """Index of the first word of what the container word at ``index`` holds, after "of" or "full of"
    ("a box of cans", "a six-pack of bottles", "a box full of cans"); None when the word is no
    container or names nothing it holds ("a box on a shelf")."""
    if words[index].split("-")[-1] not in _CONTAINER_WORDS:
        return None
    for joint in _CONTENTS_JOINTS:
        start = index + 1 + len(joint)
        if tuple(words[index + 1 : start]) == joint:
            return start
    return None


def _contents(words: Sequence[str]) -> set[int]:
    """Indices of the words that say what a container holds (``_contents_start``), up to an article or
    a preposition ("on a shelf")."""
    contents: set[int] = set()
    index = 0
    while index < len(words):
        start = _contents_start(words, index)
        if start is None:
            index += 1
            continue
        index = start
        while index < len(words) and words[index] not in _CONTENTS_END:
            contents.add(index)
            index += 1
    return contents


# Words that say nothing of the picture alone: a sentence of only these adds nothing, and a cut one does
# not end on them.
_GLUE_WORDS: Final = frozenset({"a", "an", "the", "of", "with", "and", "on", "in", "photo", "picture"})
