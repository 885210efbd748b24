"""The wikitext cleaner on hand-written markup and on real pages of the embedded dump sample. No Ray."""

import pytest

from components.data.ingest.sentences import split_sentences
from components.data.ingest.wikipedia_dump import iter_pages
from components.data.ingest.wikitext_prose import WikitextCleaner
from tests.wikipedia_dumps import sample_dump, table_markup_dump

CLEAN = WikitextCleaner()
MARKUP = ("{{", "}}", "[[", "]]", "<ref", "'''", "<math", "{|", "|}")


def prose(wikitext: str) -> str:
    return "\n".join(CLEAN.clean(wikitext).paragraphs)


@pytest.mark.parametrize("wikitext, expected", [
    ("A {{lang|de|{{nowrap|x {{y}}}}}} b.", "A b."),  # nested templates
    ("Before.\n{| class=wikitable\n|-\n| {{flag|A}} || 1\n|-\n{|\n| inner\n|}\n|}\nAfter.", "Before.\nAfter."),
    ('Fact.<ref name="a">{{cite web|url=http://x|title=T}}</ref> More<ref name=b/>.', "Fact. More."),
    ("Energy <math>E = mc^2</math> is conserved.", "Energy is conserved."),
    ("[[File:A.jpg|thumb|A [[cat]] at [[night|dusk]] [above]]]The cat.", "The cat."),
    ("[[Image:B.png|left|200px]]Text.", "Text."),
    ("A [[dog|hound]]s and [[cat]]s and [[Paris (France)|]] here.", "A hounds and cats and Paris here."),
    ("'''Bold''' and ''italic'' and '''''both'''''.", "Bold and italic and both."),
    ("Kept<!-- a comment {{x}} --> text <span style='x'>inside</span><br/>end.", "Kept text inside end."),
    ("See [http://example.com the site] and [http://bare.example].", "See the site and."),
    ("Text.\n[[de:Text]]\n[[fr:Texte]]", "Text."),
    ("Intro.\n== History ==\nPast.\n=== Early ===\nOld.", "Intro.\nPast.\nOld."),
    ("Intro.\n== See also ==\n* [[Other]]\n== References ==\n{{reflist}}\n== Later ==\nKept.", "Intro.\nKept."),
    ("Items:\n* first item\n* second [[item]]\n# numbered", "Items:\nfirst item\nsecond item\nnumbered"),
    ("Born (born {{birth date|1900|1|1}}; died 1950) in Rome&nbsp;&ndash; Italy.",
     "Born (born; died 1950) in Rome – Italy."),
    ("An unclosed {{ stays as it is.", "An unclosed {{ stays as it is."),
    ("An area of {{convert|52419|sqmi|km2|abbr=out}} and {{cvt|1|to|2|e6acre}} in {{lang|fr|la ville}}.",
     "An area of 52419 sq mi and 1 to 2 million acre in la ville."),  # inline templates of prose are rendered
    ("[[File:K.svg|thumb|Was [[kanji]], then {{lang|ja|[[wikt:気|気]]}}.]]Ki is {{lang|ja|[[wikt:気|気]]}}.",
     "Ki is 気."),  # a link inside a rendered template's argument
    (";Term\n: definition here", "Term\ndefinition here"),
])
def test_markup_becomes_prose(wikitext, expected):
    assert prose(wikitext) == expected


def test_categories_are_collected_and_removed_but_category_links_stay_text():
    out = CLEAN.clean("Text [[:Category:Seen]].\n[[Category:Cats|Sort key]]\n[[category: big_dogs ]]\n"
                      "[[Category:Cats]]")
    assert out.paragraphs == ["Text Category:Seen."]
    assert out.categories == ["Cats", "Big dogs"]


def test_hard_sentences_split_right():
    text = ('The U.S. Army arrived in 1944. Dr. J. R. R. Tolkien spoke at 3.5 p.m. on Monday. '
            'He said "Stop here." It was ca. 1500 B.C. then.')
    assert list(split_sentences([text, "Another paragraph"])) == [
        "The U.S. Army arrived in 1944.", "Dr. J. R. R. Tolkien spoke at 3.5 p.m. on Monday.", 
        'He said "Stop here."', "It was ca. 1500 B.C. then.", "Another paragraph"]


@pytest.fixture(scope="module")
def sample_pages():
    return {p.title: p for p in iter_pages(sample_dump()) if not p.redirect}


def test_chosen_pages_of_the_sample(sample_pages):
    autism = CLEAN.clean(sample_pages["Autism"].text)  # an infobox of nested templates, references, files
    sentences = list(split_sentences(autism.paragraphs))
    assert sentences[:2] == [
        "Autism is a neurodevelopmental disorder characterized by impaired social interaction, verbal and "
        "non-verbal communication, and restricted and repetitive behavior.",
        "Parents usually notice signs in the first two years of their child's life."]
    assert autism.categories[:3] == ["Autism", "Communication disorders", "Mental and behavioural disorders"]
    albedo = CLEAN.clean(sample_pages["Albedo"].text)  # <math> nine times
    assert albedo.paragraphs[0].startswith('Albedo or reflection coefficient, derived from Latin albedo "whiteness"')
    assert "Climatology" in albedo.categories
    for page in sample_pages.values():
        text = "\n".join(CLEAN.clean(page.text).paragraphs)
        assert not [m for m in MARKUP if m in text], page.title


def test_the_table_markup_page():
    pages = {p.title: p for p in iter_pages(table_markup_dump())}
    out = CLEAN.clean(pages["Academy Award for Best Production Design"].text)
    sentences = list(split_sentences(out.paragraphs))
    assert sentences[0] == ("The Academy Award for Best Production Design recognizes achievement for art direction "
                            "in film.")
    assert sentences[-1] == ("In the lists below, the winner of the award for each year is shown first, followed by "
                             "the other nominees.")
    assert len(sentences) == 7  # the year-by-year tables are gone, every row of them
    assert out.categories == ["Academy Awards", "Best Art Direction Academy Award winners",
                              "Awards for best art direction"]
    for page in pages.values():
        text = "\n".join(CLEAN.clean(page.text).paragraphs)
        assert not [m for m in MARKUP if m in text], page.title
        assert not any(line.startswith(("|", "!")) for line in text.splitlines()), page.title
