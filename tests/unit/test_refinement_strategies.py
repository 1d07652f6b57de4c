"""Persona update strategies with the scripted model: what each prompt shows, the bounded re-ask, the flags."""

from __future__ import annotations

import pytest

from personalens.errors import LLMOutputError
from personalens.llm.testing import ScriptedChatModel
from personalens.refinement.prompts import RatedItem
from personalens.refinement.strategies import PersonaWriter, ReaskSampling

LONG = " ".join(["Enjoys careful storytelling and warm characters."] * 6)  # 36 words
W0 = [RatedItem("Alpha Saga", 5.0), RatedItem("Beta Blues", 1.5)]
W1 = [RatedItem("Gamma Road", 4.0, predicted=2.5), RatedItem("Delta Dawn", 0.5, predicted=3.0)]


def _writer(model, **kw):
    return PersonaWriter(model, domain="movies", scale=(0.5, 5.0, 0.5), min_words=30, max_words=60, **kw)


def _prompt(model, index=-1):
    return model.calls[index].messages[-1].content


def test_initial_persona_shows_window_ratings_and_the_scale():
    model = ScriptedChatModel([LONG])
    persona = _writer(model).initial(W0)
    assert persona.text == LONG and not persona.short and persona.attempts == 1
    shown = _prompt(model)
    assert "Alpha Saga: rated 5" in shown and "0.5 (worst) to 5 (best) in steps of 0.5" in shown
    assert "Do not name any item" in shown


def test_refine_shows_predicted_versus_actual_and_needs_predictions():
    model = ScriptedChatModel([LONG])
    _writer(model).update("refine", "Old profile text.", [W0, W1])
    shown = _prompt(model)
    assert "Old profile text." in shown and "Gamma Road: predicted 2.5, actual 4" in shown
    assert "Alpha Saga" not in shown  # only the current window
    with pytest.raises(ValueError, match="prediction"):
        _writer(model).update("refine", "Old.", [W0])


@pytest.mark.parametrize(
    ("strategy", "present", "absent"),
    [
        ("slide_regen", ["Gamma Road: rated 4"], ["Old profile", "Alpha Saga", "predicted"]),
        ("full_regen", ["Gamma Road: rated 4", "Alpha Saga: rated 5"], ["Old profile"]),
        ("inc_update", ["Old profile", "Gamma Road: rated 4"], ["Alpha Saga", "predicted"]),
    ],
)
def test_each_strategy_sees_what_it_should(strategy, present, absent):
    model = ScriptedChatModel([LONG])
    _writer(model).update(strategy, "Old profile text.", [W0, W1])
    shown = _prompt(model)
    assert all(p in shown for p in present) and not any(a in shown for a in absent)


def test_hier_merge_writes_a_short_term_persona_then_merges():
    model = ScriptedChatModel([LONG, LONG.replace("warm", "bold")])
    out = _writer(model).update("hier_merge", "Old profile text.", [W0, W1])
    assert len(model.calls) == 2 and "bold" in out.text and out.attempts == 2
    assert "Gamma Road" in _prompt(model, 0) and "Old profile" not in _prompt(model, 0)
    assert "Old profile text." in _prompt(model, 1) and LONG in _prompt(model, 1)


def test_short_answer_is_re_asked_once_then_flagged():
    model = ScriptedChatModel(["Likes films.", "Likes films and music a lot."])
    out = _writer(model).initial(W0)
    assert out.attempts == 2 and out.short and out.text == "Likes films and music a lot."
    assert "has 2 words" in _prompt(model)
    model = ScriptedChatModel(["", ""])
    with pytest.raises(LLMOutputError) as info:
        _writer(model).initial(W0)
    assert info.value.raw == ["", ""]


HALF = " ".join(["Enjoys slow films with care."] * 5)  # 25 words: under min_words (30), enough to extend
MORE = "Dislikes loud sequels, avoids remakes and rarely rates a comedy above three stars."  # 14 new words
LONG_NEW = " ".join(f"Trait {i} noted." for i in range(20))  # 60 words, none of them a repeat


def test_a_short_answer_is_extended_with_the_missing_paragraphs():
    model = ScriptedChatModel([HALF, MORE])
    out = _writer(model).initial(W0)
    assert out.text == f"{HALF} {MORE}" and not out.short and out.attempts == 2
    follow_up = model.calls[1].messages
    assert follow_up[-2].role == "assistant" and follow_up[-2].content == HALF  # the model sees what it wrote
    asked = follow_up[-1].content
    assert "has 25 words" in asked and "Do not repeat" in asked
    # asked past the minimum (30 - 25 + 10 = 15) up to the room left (60 - 25 = 35)
    assert "15 to 35 more words" in asked
    # the stitched profile is bounded like any answer
    model = ScriptedChatModel([HALF, LONG_NEW])
    out = _writer(model).initial(W0)
    assert len(out.text.split()) <= 60 and out.text.startswith(HALF) and out.repetitive_extensions == 0
    # the continuation is asked for with the repetition penalty, at the caller's temperature
    assert (model.calls[1].repetition_penalty, model.calls[1].temperature) == (1.3, 0.0)
    assert model.calls[0].repetition_penalty is None


def test_a_continuation_that_restates_the_profile_is_refused_and_the_answer_stays_short():
    restated = "Enjoys slow films with care. Enjoys slow films with care. Dislikes noise."
    model = ScriptedChatModel([HALF, restated])
    out = _writer(model).initial(W0)
    assert out.text == HALF and out.short and out.repetitive_extensions == 1 and out.attempts == 2
    # with a third attempt the continuation is asked again, sampled (the same greedy request would repeat itself)
    model = ScriptedChatModel([HALF, restated, MORE])
    out = _writer(model, max_attempts=3).initial(W0)
    assert out.text == f"{HALF} {MORE}" and not out.short and out.repetitive_extensions == 1
    third = model.calls[2]
    assert (third.temperature, third.top_p, third.repetition_penalty) == (0.7, 0.95, 1.3)
    assert third.messages[-2].content == HALF  # the refused continuation is not shown as written
    # the gate's threshold is a setting
    model = ScriptedChatModel([HALF, restated])
    out = _writer(model, extend_max_repeated=1.0).initial(W0)
    assert out.text.startswith(HALF) and "Dislikes noise." in out.text and out.repetitive_extensions == 0
    assert _writer(model).config()["extend"] == {"repetition_penalty": 1.3, "max_repeated": 0.4}
    assert _writer(model, short_answers="rewrite").config()["extend"] is None
    with pytest.raises(ValueError, match="extend_max_repeated"):
        _writer(model, extend_max_repeated=0)


def test_an_extension_that_stays_short_is_extended_again_within_the_attempts_then_flagged():
    model = ScriptedChatModel([HALF, "Also likes tea.", "Dislikes noise and crowds."])
    out = _writer(model, max_attempts=3).initial(W0)
    assert out.text == f"{HALF} Also likes tea. Dislikes noise and crowds." and out.attempts == 3 and not out.short
    model = ScriptedChatModel([HALF, "Also likes tea."])
    out = _writer(model).initial(W0)
    assert out.text == f"{HALF} Also likes tea." and out.short  # 28 words after the two attempts


def test_rewrite_mode_and_a_near_empty_answer_ask_for_the_whole_profile_again():
    model = ScriptedChatModel([HALF, MORE])
    out = _writer(model, short_answers="rewrite").initial(W0)
    assert out.text == HALF and out.short  # two single replies; the longer one is kept
    assert "Write the complete profile again" in _prompt(model)
    model = ScriptedChatModel(["Enjoys slow films.", LONG])  # 3 words, under a quarter of 30: nothing to build on
    out = _writer(model).initial(W0)
    assert out.text == LONG and "Write the complete profile again" in _prompt(model)
    with pytest.raises(ValueError, match="short_answers"):
        _writer(ScriptedChatModel([]), short_answers="pad")


def test_a_copy_is_re_asked_in_full_even_when_it_is_short():
    old = HALF
    model = ScriptedChatModel([old, LONG])
    out = _writer(model).update("refine", old, [W0, W1])
    assert out.text == LONG and "unchanged" in _prompt(model) and "Do not repeat" not in _prompt(model)


def test_leaked_titles_are_reported_and_length_is_bounded():
    model = ScriptedChatModel([LONG + " Loved Alpha Saga. " + LONG])
    out = _writer(model, drop_naming=False).initial(W0)
    assert len(out.text.split()) <= 60 and out.leaked in ((), ("Alpha Saga",))
    model = ScriptedChatModel(["Loved Alpha Saga. " + LONG])
    assert _writer(model, drop_naming=False).initial(W0).leaked == ("Alpha Saga",)


def test_samples_differ_in_the_request():
    model = ScriptedChatModel([LONG, LONG])
    writer = _writer(model)
    writer.update("inc_update", "Old.", [W1], temperature=0.8, sample=1)
    writer.update("inc_update", "Old.", [W1], temperature=0.8, sample=2)
    assert [c.sample for c in model.calls] == [1, 2] and all(c.temperature == 0.8 for c in model.calls)


@pytest.mark.parametrize("strategy", ["refine", "inc_update"])
def test_an_update_that_copies_the_old_persona_is_re_asked(strategy):
    revised = LONG.replace("warm", "bold")
    model = ScriptedChatModel([LONG + "\n", revised])  # the first answer is the old persona (up to whitespace)
    out = _writer(model).update(strategy, LONG, [W0, W1])
    assert out.text == revised and out.attempts == 2 and not out.unchanged
    assert "the current profile, unchanged" in _prompt(model)


def test_a_persistent_copy_is_kept_and_flagged_and_a_shorter_revision_wins_over_it():
    model = ScriptedChatModel([LONG, LONG])
    out = _writer(model).update("inc_update", LONG, [W0, W1])
    assert out.text == LONG and out.unchanged and out.attempts == 2
    model = ScriptedChatModel([LONG, "Now prefers bold comedies over slow dramas."])
    out = _writer(model).update("inc_update", LONG, [W0, W1])
    assert out.text.startswith("Now prefers") and out.short and not out.unchanged


def test_hier_merge_re_asks_a_merge_that_returns_the_long_term_persona():
    model = ScriptedChatModel([LONG.replace("warm", "new"), LONG, LONG.replace("warm", "merged")])
    out = _writer(model).update("hier_merge", LONG, [W0, W1])
    assert "merged" in out.text and len(model.calls) == 3 and not out.unchanged


def test_regenerations_and_training_samples_are_never_re_asked_for_sameness():
    model = ScriptedChatModel([LONG])
    out = _writer(model).update("slide_regen", LONG, [W0, W1])  # a regeneration never sees the old persona
    assert len(model.calls) == 1 and not out.unchanged
    model = ScriptedChatModel([LONG])
    out = _writer(model, reask_unchanged=False).update("refine", LONG, [W0, W1])
    assert len(model.calls) == 1 and out.text == LONG and not out.unchanged


def test_a_copy_with_a_tail_that_the_length_cut_removes_is_still_a_copy():
    old = " ".join(f"Sentence number {i} about taste." for i in range(10))  # 50 words
    tail = "And then a long closing remark that runs on and on past the limit of sixty words here."  # cut away
    revised = old.replace("taste", "pace")
    model = ScriptedChatModel([old + " " + tail, revised])
    out = _writer(model).update("refine", old, [W0, W1])
    assert out.text == revised and out.attempts == 2 and not out.unchanged


def test_the_copy_re_ask_samples_while_a_short_answer_re_ask_keeps_the_callers_settings():
    revised = LONG.replace("warm", "bold")
    model = ScriptedChatModel([LONG, revised])
    _writer(model).update("refine", LONG, [W0, W1], sample=3)
    first, reask = model.calls
    assert (first.temperature, first.top_p, first.repetition_penalty) == (0.0, None, None)
    assert (reask.temperature, reask.top_p, reask.repetition_penalty) == (0.7, 0.95, 1.1)
    assert reask.seed == 3 and reask.sample == 3  # reproducible, and cached apart from other samples
    model = ScriptedChatModel(["Too short.", LONG])
    _writer(model).update("refine", "Old persona.", [W0, W1])
    assert [c.temperature for c in model.calls] == [0.0, 0.0]  # not a copy: the length re-ask stays greedy


def test_the_copy_re_ask_sampling_is_configurable_and_never_cools_a_hotter_caller():
    revised = LONG.replace("warm", "bold")
    model = ScriptedChatModel([LONG, revised])
    _writer(model, reask_sampling=None).update("inc_update", LONG, [W0, W1])
    assert [c.temperature for c in model.calls] == [0.0, 0.0]
    model = ScriptedChatModel([LONG, revised])
    _writer(model, reask_sampling=ReaskSampling(temperature=1.0, top_p=0.9)).update("inc_update", LONG, [W0, W1])
    assert (model.calls[1].temperature, model.calls[1].top_p) == (1.0, 0.9)
    model = ScriptedChatModel([LONG, revised])  # a verified candidate sampled at 0.8 keeps its own settings
    _writer(model).update("refine", LONG, [W0, W1], temperature=0.8, sample=2)
    assert [c.temperature for c in model.calls] == [0.8, 0.8] and model.calls[1].top_p is None


def test_writer_config_names_the_re_ask_settings():
    config = _writer(ScriptedChatModel([])).config()
    assert config["reask_sampling"] == {"temperature": 0.7, "top_p": 0.95, "repetition_penalty": 1.1}
    assert _writer(ScriptedChatModel([]), reask_sampling=None).config()["reask_sampling"] is None
    assert config["short_answers"] == "extend"


def test_repeated_trigram_share_counts_restated_wording():
    from personalens.profiling.summarize import repeated_trigram_share

    assert repeated_trigram_share("one two three four") == 0.0
    assert repeated_trigram_share("a b c a b c") == pytest.approx(1 / 4)  # abc bca cab abc: the last one repeats
    assert repeated_trigram_share("Likes slow films", after="He likes slow films.") == 1.0  # case and punctuation
    assert repeated_trigram_share("two words") == 0.0 and repeated_trigram_share("") == 0.0


def test_a_writer_wide_repetition_penalty_applies_where_the_caller_names_none():
    model = ScriptedChatModel([LONG, LONG, LONG])
    writer = _writer(model, repetition_penalty=1.2)
    writer.initial(W0)
    writer.update("refine", "Old.", [W0, [RatedItem(x.text, x.rating, 3.0) for x in W1]], repetition_penalty=1.05)
    assert [c.repetition_penalty for c in model.calls] == [1.2, 1.05]
    assert writer.config()["repetition_penalty"] == 1.2
    assert "repetition_penalty" not in _writer(model).config()  # unset: recorded settings stay as before
    with pytest.raises(ValueError, match="repetition_penalty"):
        _writer(model, repetition_penalty=0.9)


PROFILE = " ".join(["This person values patient storytelling and warm, believable characters."] * 4)  # 36 words
ANALYSED = f"""### Current Profile of a Person's Taste
Old wording that restates the old profile before it changes anything at all.

### Where the Predictions Went Wrong
1. **Gamma Road** - predicted 2.5, actual 4: the profile undersold quiet dramas.

### Revised Profile
Here is the corrected profile:
---
{PROFILE}
"""


@pytest.mark.parametrize(
    ("answer", "cut"),
    [
        (ANALYSED, True),
        (f"Some analysis of the errors first.\n\nRewritten profile:\n{PROFILE}\n", True),
        (f"Analysis of what went wrong.\n\n**Updated persona:** {PROFILE}\n", True),
        (f"## Revised Profile:\n**Current Profile of a Person's Taste in Movies:**\n{PROFILE}\n", False),  # titles
        (f"Analysis.\n\n### Final Profile\n\n{PROFILE}\n\n### Explanation of Changes\nIt now covers dramas.\n", True),
        (f"### New Profile\n{PROFILE}\n- Gamma Road: predicted 2.5, actual 4\n", True),
    ],
)
def test_the_revised_section_is_the_profile_under_its_heading(answer, cut):
    from personalens.profiling.summarize import revised_section

    section, was_cut = revised_section(answer)
    assert was_cut is cut and " ".join(section.split()) == PROFILE


@pytest.mark.parametrize(
    "answer",
    [
        PROFILE,  # no heading at all
        f"### Profile of a Person's Taste in Movies\n{PROFILE}",  # a title, not a revision
        f"{PROFILE}\n\n### Revised Profile\nShort tail only.",  # too little under the heading to be the profile
        f"### Misjudgments and Corrections\n1. The profile undersold dramas.\n{PROFILE}",  # analysis, no revision
    ],
)
def test_an_answer_without_a_revised_section_is_kept_whole(answer):
    from personalens.profiling.summarize import revised_section

    assert revised_section(answer) == (answer, False)


def test_the_last_heading_with_a_profile_under_it_wins():
    from personalens.profiling.summarize import revised_section

    other = " ".join(["An earlier draft that the answer later replaced with a final one."] * 3)
    answer = f"### Revised Profile\n{other}\n\n### Final Profile\n{PROFILE}\n\n### Updated profile:\nThat is all."
    assert revised_section(answer) == (PROFILE, True)


def test_the_writer_keeps_only_the_revised_profile_and_counts_the_cut():
    model = ScriptedChatModel([ANALYSED])
    written = _writer(model).update("refine", "Old profile text.", [W0, W1])
    assert written.text == PROFILE and written.cut_to_revision == 1 and not written.short
    assert "Gamma Road" not in written.text and not written.leaked
    whole = _writer(ScriptedChatModel([ANALYSED]), revised_only=False, drop_naming=False).update(
        "refine", "Old.", [W0, W1]
    )
    assert whole.cut_to_revision == 0 and "Gamma Road" in whole.text and whole.leaked
    assert _writer(model).config()["revised_only"] is True
    assert "revised_only" not in _writer(model, revised_only=False).config()  # settings recorded before it match


def test_a_cut_that_leaves_a_short_profile_is_extended_and_the_continuation_is_never_cut():
    short = " ".join(PROFILE.split()[:20])
    more = "They also enjoy documentaries about craft, music and the people behind it, and rate slow dramas highly."
    continuation = f"### Revised Profile\n{more}\n"  # a continuation is appended as written, never cut
    model = ScriptedChatModel(
        [f"Analysis first.\n\n### Revised Profile\n{short} and even more here now.", continuation]
    )
    written = _writer(model).update("refine", "Old profile text.", [W0, W1])
    assert written.cut_to_revision == 1 and written.attempts == 2
    assert written.text.startswith(short) and "Revised Profile" in written.text


def test_sentences_naming_an_item_are_dropped_line_by_line_with_a_lead_in_left_empty():
    from personalens.profiling.summarize import drop_naming_sentences

    text = (
        "Likes slow dramas. They loved Gamma Road (1998) for its pace.\n\n"
        "Since then the person rated these:\n- Gamma Road: rated 4\n- delta dawn: rated 1\n\n"
        "Keeps this. Delta Dawn was a miss! Dislikes loud action.\n"
        "Also likes:\n- quiet character studies"
    )
    kept, dropped = drop_naming_sentences(text, ["Gamma Road (1998)", "Delta Dawn", "Up"])  # "Up": too short to check
    assert dropped == 4
    assert kept == "Likes slow dramas.\n\nKeeps this. Dislikes loud action.\nAlso likes:\n- quiet character studies"
    assert drop_naming_sentences("Nothing named here.", ["Gamma Road"]) == ("Nothing named here.", 0)


def test_the_writer_drops_sentences_that_name_an_item_before_judging_the_answer():
    naming = f"{PROFILE} They rated Gamma Road highly."
    written = _writer(ScriptedChatModel([naming])).update("refine", "Old profile text.", [W0, W1])
    assert written.text == PROFILE and written.dropped_sentences == 1 and not written.leaked
    kept = _writer(ScriptedChatModel([naming]), drop_naming=False).update("refine", "Old.", [W0, W1])
    assert kept.dropped_sentences == 0 and kept.leaked == ("Gamma Road",)
    assert _writer(ScriptedChatModel([])).config()["drop_naming"] is True
    assert "drop_naming" not in _writer(ScriptedChatModel([]), drop_naming=False).config()
    # a drop that leaves the answer short gets the usual follow-up for the missing part
    short = " ".join(PROFILE.split()[:24])
    more = "They also enjoy documentaries about craft, music and the people behind it, and rate slow dramas highly."
    model = ScriptedChatModel([f"{short}. Gamma Road was their favourite by far this time.", more])
    written = _writer(model).update("refine", "Old profile text.", [W0, W1])
    assert written.dropped_sentences == 1 and written.attempts == 2 and "Gamma Road" not in written.text


def test_a_one_word_title_names_an_item_only_as_the_title_writes_it():
    from personalens.profiling.summarize import drop_naming_sentences, find_leaked_titles

    assert find_leaked_titles("They avoid films that turn up the heat.", ["Heat (1995)"]) == ()
    assert find_leaked_titles("They rated Heat highly.", ["Heat (1995)"]) == ("Heat (1995)",)
    assert find_leaked_titles("they loved gazpacho.", ["gazpacho"]) == ("gazpacho",)  # recipe names in lower case
    text = "They avoid films that turn up the heat. Heat was a favourite."
    assert drop_naming_sentences(text, ["Heat (1995)"]) == ("They avoid films that turn up the heat.", 1)


def test_an_explanation_after_the_revised_profile_is_left_out():
    from personalens.profiling.summarize import revised_section

    answer = f"Analysis.\n\n### Revised Profile\n{PROFILE}\n\n### Why This Profile Holds True:\n1. It fits the errors."
    assert revised_section(answer) == (PROFILE, True)


def test_a_revision_heading_on_top_of_an_answer_that_is_all_profile_is_only_a_title():
    from personalens.profiling.summarize import revised_section

    assert revised_section(f"### Revised Profile\n\n{PROFILE}\n") == (PROFILE, False)
    assert revised_section(f"**Updated persona:** {PROFILE}") == (PROFILE, False)
    assert revised_section(f"Some analysis.\n**Updated persona:** {PROFILE}") == (PROFILE, True)


def test_clean_up_counts_are_those_of_the_kept_answer_not_of_every_attempt():
    short_cut = f"Analysis first.\n\n### Revised Profile\n{' '.join(PROFILE.split()[:26])} more."
    model = ScriptedChatModel([short_cut, PROFILE])  # rewrite mode: the second, uncut answer is kept
    written = _writer(model, short_answers="rewrite").update("refine", "Old profile text.", [W0, W1])
    assert written.text == PROFILE and written.attempts == 2
    assert written.cut_to_revision == 0 and written.dropped_sentences == 0


def test_a_title_with_sentence_punctuation_drops_the_sentences_it_runs_through():
    from personalens.profiling.summarize import drop_naming_sentences

    text = "They loved Ah! My Goddess for its mood. They like quiet films. Dr. Dolittle bored them."
    kept, dropped = drop_naming_sentences(text, ["Ah! My Goddess", "Dr. Dolittle (1998)"])
    assert kept == "They like quiet films." and dropped == 4  # two sentences each, as the splitter sees them


def test_a_sentence_about_the_updated_profile_is_not_a_revision_heading():
    from personalens.profiling.summarize import revised_section

    changes = "- " + " ".join(["It now weighs pacing and tone more than before, and genre less."] * 3)
    answer = f"{PROFILE}\n\nThe updated profile reflects these changes:\n{changes}"
    assert revised_section(answer) == (answer, False)
    labelled = f"Analysis of the errors.\n\nHere is the revised profile of this person:\n{PROFILE}"
    assert revised_section(labelled) == (PROFILE, True)
