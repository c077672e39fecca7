"""Text cleaning: Project Gutenberg boilerplate, flattened paragraphs, normalisation and paragraph dedup."""

from orchestrator.data.cleaning import (
    DEDUP_MIN_CHARS,
    Document,
    clean_document,
    decode_text,
    deduplicate_paragraphs,
    normalise_text,
    restore_flattened_paragraphs,
    split_paragraphs,
    strip_gutenberg_boilerplate,
)

BODY = "It was a dark and stormy night; the rain fell in torrents.\n\nExcept at occasional intervals."
PG_BOOK = (
    "The Project Gutenberg EBook of Stormy Night, by A. Writer\n\n"
    "This eBook is for the use of anyone anywhere at no cost.\n\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK STORMY NIGHT ***\n\n"
    f"{BODY}\n\n"
    "End of the Project Gutenberg EBook of Stormy Night, by A. Writer\n\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK STORMY NIGHT ***\n\n"
    "Updated editions will replace the previous one. Project Gutenberg-tm License.\n"
)


def test_gutenberg_header_closing_line_and_licence_are_stripped():
    text = strip_gutenberg_boilerplate(PG_BOOK)
    assert split_paragraphs(text) == split_paragraphs(BODY)


def test_gutenberg_markers_inside_a_flattened_line_are_stripped():
    flattened = (
        "The Project Gutenberg eBook, Stormy Night   ***START OF THE PROJECT GUTENBERG EBOOK STORMY NIGHT***"
        "   It was a dark night.   TABLEAU    ***END OF THE PROJECT GUTENBERG EBOOK STORMY NIGHT***   "
        "******* This file should be named 844.txt *******   Project Gutenberg-tm License"
    )
    document = clean_document("book", restore_flattened_paragraphs(flattened))
    assert document.paragraphs == ("It was a dark night.", "TABLEAU")


def test_text_without_gutenberg_markers_keeps_footnote_stars():
    text = "a round tower*** in the neighbourhood\n\n***Near Kells, in Ireland, there is a round tower"
    assert strip_gutenberg_boilerplate(text) == text


def test_flattened_book_paragraphs_are_restored_at_three_or_more_spaces():
    line = "  Produced by A Volunteer      CHAPTER I   Call me Ishmael.  Years ago.\xa0 Never mind.    Fin. "
    assert restore_flattened_paragraphs(line).split("\n\n") == [
        "Produced by A Volunteer",
        "CHAPTER I",
        "Call me Ishmael. Years ago. Never mind.",
        "Fin.",
    ]


def test_leading_produced_by_credit_is_dropped_but_later_mentions_stay():
    document = clean_document("doc", "Produced by A Volunteer\n\nCHAPTER I\n\nThe effect produced by rain.")
    assert document.paragraphs == ("CHAPTER I", "The effect produced by rain.")


def test_normalisation_fixes_newlines_bom_controls_and_no_break_spaces():
    raw = "\ufeffLine one\x02 \r\nLine\xa0two\t \rLine three"
    assert normalise_text(raw) == "Line one\nLine two\nLine three"


def test_paragraphs_split_on_blank_lines_and_keep_inner_newlines():
    assert split_paragraphs("\n\nverse one\nverse two\n \n\n\nprose\n") == ["verse one\nverse two", "prose"]


def test_invalid_utf8_is_read_as_latin1():
    assert decode_text(b"Caesar \xe6 fin") == "Caesar æ fin"
    assert decode_text("\ufeffplain".encode()) == "plain"


LONG = "The quick brown fox jumps over the lazy dog while the farmer sleeps soundly in the barn."


def test_repeated_long_paragraphs_are_dropped_keeping_the_first_occurrence():
    assert len(LONG) >= DEDUP_MIN_CHARS
    variant = "  the QUICK brown fox jumps over the lazy dog, while the farmer sleeps soundly in the barn!"
    documents = [
        Document("a", ("Ham.", LONG, "Exit.")),
        Document(
            "b", ("Ham.", variant, "A different and sufficiently long paragraph that appears only once.")
        ),
        Document("c", (LONG,)),
    ]
    kept, stats = deduplicate_paragraphs(documents)
    assert [d.name for d in kept] == ["a", "b"]
    assert kept[0].paragraphs == ("Ham.", LONG, "Exit.")
    assert kept[1].paragraphs == (
        "Ham.",
        "A different and sufficiently long paragraph that appears only once.",
    )
    assert (stats.num_paragraphs_in, stats.num_paragraphs_out, stats.num_documents_emptied) == (7, 5, 1)


def test_short_repeated_paragraphs_are_kept():
    documents = [Document("play", ("Ham.", "To be.", "Ham.", "Or not.", "Ham."))]
    kept, stats = deduplicate_paragraphs(documents)
    assert kept == documents
    assert stats.num_paragraphs_out == 5
