"""The article's language: its name for the prompts, and the words of the fallbacks.

Every prompt to the text model names the requested language (``instruction``). Where the model's
output is unusable, the pipeline falls back to deterministic text (headings, a section
sentence, tags). Those fallbacks exist in the languages below; for any other language they are
built from the request's own words (the topic, the headings) and carry no English, so an
article labelled `ja` never holds English headings that pretend to be Japanese.
"""

from __future__ import annotations

from dataclasses import dataclass

import langcodes

# RFC 5646 puts no bound on a tag; 35 characters hold every registered form with room to spare.
MAX_TAG_CHARS = 35

# ISO 639-1 codes of languages Llama-2-class models write, by English name (the prompt's).
NAMES = {
    "ar": "Arabic",
    "bg": "Bulgarian",
    "ca": "Catalan",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "et": "Estonian",
    "fa": "Persian",
    "fi": "Finnish",
    "fr": "French",
    "he": "Hebrew",
    "hi": "Hindi",
    "hr": "Croatian",
    "hu": "Hungarian",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "nb": "Norwegian Bokmål",
    "nl": "Dutch",
    "no": "Norwegian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sk": "Slovak",
    "sl": "Slovenian",
    "sr": "Serbian",
    "sv": "Swedish",
    "th": "Thai",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "vi": "Vietnamese",
    "zh": "Chinese",
}


@dataclass(frozen=True)
class Fallbacks:
    headings: tuple[str, ...]  # `{topic}` is replaced by the topic
    section: str  # `{heading}` and `{topic}`
    illustration: str  # alt text of a fallback image: `{subject}`
    stopwords: frozenset[str]  # left out of tags taken from the topic


FALLBACKS = {
    "en": Fallbacks(
        (
            # No verb agrees with the topic, so a plural one reads as well as a singular one
            # ("Heat pumps explained", never "What heat pumps is").
            "{topic} explained",
            "The case for {topic}",
            "{topic} in practice",
            "The benefits",
            "The challenges",
            "Getting started",
            "Real-world examples",
            "Common mistakes",
            "Costs and trade-offs",
            "What experts say",
            "Looking ahead",
            "Key takeaways",
        ),
        "This section, {heading}, covers one part of {topic}.",
        "Illustration: {subject}",
        frozenset(
            "a an and are as at be by for from how in into is it of on or the to what why with "
            "your you about".split()
        ),
    ),
    "de": Fallbacks(
        (
            "Worum es bei {topic} geht",
            "Warum {topic} wichtig ist",
            "Wie {topic} funktioniert",
            "Die Vorteile",
            "Die Herausforderungen",
            "Der Einstieg",
            "Beispiele aus der Praxis",
            "Häufige Fehler",
            "Kosten und Abwägungen",
            "Was Fachleute sagen",
            "Ein Ausblick",
            "Das Wichtigste in Kürze",
        ),
        "Dieser Abschnitt, {heading}, behandelt einen Teil des Themas {topic}.",
        "Illustration: {subject}",
        frozenset(
            "der die das den dem des ein eine einer eines und oder in im am an auf aus bei mit "
            "für von vom zu zum zur ist sind wie was warum über unter nach vor".split()
        ),
    ),
    "fr": Fallbacks(
        (
            "Ce qu'est {topic}",
            "Pourquoi {topic} compte",
            "Comment fonctionne {topic}",
            "Les avantages",
            "Les défis",
            "Pour commencer",
            "Des exemples concrets",
            "Les erreurs fréquentes",
            "Coûts et compromis",
            "L'avis des experts",
            "Perspectives",
            "L'essentiel",
        ),
        "Cette section, {heading}, traite d'un aspect de {topic}.",
        "Illustration : {subject}",
        frozenset(
            "le la les l un une des du de d et ou en dans au aux sur pour par avec est sont "
            "comment pourquoi que qui".split()
        ),
    ),
    "es": Fallbacks(
        (
            "Qué es {topic}",
            "Por qué importa {topic}",
            "Cómo funciona {topic}",
            "Las ventajas",
            "Los retos",
            "Primeros pasos",
            "Ejemplos reales",
            "Errores frecuentes",
            "Costes y compromisos",
            "Qué dicen los expertos",
            "Mirando al futuro",
            "Ideas clave",
        ),
        "Esta sección, {heading}, trata una parte de {topic}.",
        "Ilustración: {subject}",
        frozenset(
            "el la los las un una unos unas y o en de del al a por para con es son cómo qué "
            "por qué sobre".split()
        ),
    ),
    "it": Fallbacks(
        (
            "Che cos'è {topic}",
            "Perché {topic} conta",
            "Come funziona {topic}",
            "I vantaggi",
            "Le sfide",
            "Come iniziare",
            "Esempi concreti",
            "Errori comuni",
            "Costi e compromessi",
            "Cosa dicono gli esperti",
            "Uno sguardo al futuro",
            "In sintesi",
        ),
        "Questa sezione, {heading}, tratta una parte di {topic}.",
        "Illustrazione: {subject}",
        frozenset(
            "il lo la i gli le un uno una e o in di del della da a al per con su è sono come "
            "perché che".split()
        ),
    ),
    "pt": Fallbacks(
        (
            "O que é {topic}",
            "Por que {topic} importa",
            "Como funciona {topic}",
            "As vantagens",
            "Os desafios",
            "Primeiros passos",
            "Exemplos reais",
            "Erros comuns",
            "Custos e compromissos",
            "O que dizem os especialistas",
            "Olhando para o futuro",
            "Pontos-chave",
        ),
        "Esta seção, {heading}, trata de uma parte de {topic}.",
        "Ilustração: {subject}",
        frozenset(
            "o a os as um uma e ou em no na de do da dos das para por com é são como que "
            "porque sobre".split()
        ),
    ),
    "nl": Fallbacks(
        (
            "Wat {topic} is",
            "Waarom {topic} ertoe doet",
            "Hoe {topic} werkt",
            "De voordelen",
            "De uitdagingen",
            "Aan de slag",
            "Voorbeelden uit de praktijk",
            "Veelgemaakte fouten",
            "Kosten en afwegingen",
            "Wat experts zeggen",
            "Vooruitblik",
            "De belangrijkste punten",
        ),
        "Deze sectie, {heading}, behandelt een deel van {topic}.",
        "Illustratie: {subject}",
        frozenset(
            "de het een en of in op aan van voor met bij uit naar is zijn hoe wat waarom "
            "over".split()
        ),
    ),
}


def canonical_tag(tag: str) -> str:
    """A BCP-47 tag (RFC 5646, checked by langcodes against the IANA registry) in its
    canonical case, deprecated subtags replaced; a ValueError saying what is wrong otherwise."""
    if "_" in tag:
        raise ValueError(
            f"{tag!r} is not a BCP-47 tag: subtags are joined by '-', as in "
            f"{tag.replace('_', '-')!r}"
        )
    if not langcodes.tag_is_valid(tag):
        raise ValueError(
            f"{tag!r} is not a valid BCP-47 language tag (RFC 5646), such as en, de-AT, "
            "es-419 or zh-Hant"
        )
    return str(langcodes.standardize_tag(tag))


def base(tag: str) -> str:
    """`de-AT` -> `de`."""
    return tag.split("-", 1)[0].lower()


def name(tag: str) -> str:
    """The language's English name for a prompt: `German (de-AT)`, or the tag itself."""
    known = NAMES.get(base(tag))
    if known is None:
        return f"the language with the BCP-47 tag {tag}"
    return known if tag == base(tag) else f"{known} ({tag})"


def fallbacks(tag: str) -> Fallbacks | None:
    """Fallback words in this language, or None where the fallbacks must use the request's own."""
    return FALLBACKS.get(base(tag))
