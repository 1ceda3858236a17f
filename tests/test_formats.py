"""The formats people already have (TRL, chat messages, HH-RLHF) read into the same records as
their canonical twins; the errors for lines of no known format; the two prompt templates."""

import json

import pytest

from nanoinstruct.cli import UserError
from nanoinstruct.data import check_template, read_comparisons, read_demos, read_prompts, write_jsonl
from nanoinstruct.tokenizer import TEMPLATES, format_prompt, get_tokenizer


def user(s):
    return {"role": "user", "content": s}


def bot(s):
    return {"role": "assistant", "content": s}


SYSTEM = {"role": "system", "content": "Be brief."}
SKY, BLUE, GREEN = "What color is the sky?", "It is blue.", "It is green."

# Real-looking HH-RLHF lines (Anthropic/hh-rlhf, helpful-base): a leading "\n\n", a space
# after each colon, multi-turn, a turn's content holding "\n\n" itself.
HH_1 = {"chosen": "\n\nHuman: How do I get my cat to stop scratching the couch?\n\nAssistant: Put a "
                  "scratching post next to the couch and praise her when she uses it.",
        "rejected": "\n\nHuman: How do I get my cat to stop scratching the couch?\n\nAssistant: Cats "
                    "scratch."}
TRIP = ("\n\nHuman: Can you help me plan a trip to Lisbon?\n\nAssistant: Sure. How many days do you "
        "have?\n\nHuman: Three days, in May.\n\nAssistant: Here is a plan.\n\nDay 1: Alfama.\nDay 2: "
        "Belem.\n\nHuman: And the third day?\n\nAssistant:")
HH_3 = {"chosen": TRIP + " Take the train to Sintra for the palaces.", "rejected": TRIP + " Lisbon is in Portugal."}
TRIP_PROMPT = [user("Can you help me plan a trip to Lisbon?"), bot("Sure. How many days do you have?"),
               user("Three days, in May."), bot("Here is a plan.\n\nDay 1: Alfama.\nDay 2: Belem."),
               user("And the third day?")]

# (reader, lines in the format, the same records written canonically)
TWINS = {
    "trl prompt-completion": (read_demos, [
        {"prompt": "Say hi.", "completion": "hi", "style": "terse"},
        {"prompt": [user(SKY)], "completion": [bot(BLUE)]},                 # TRL conversational
        {"prompt": [SYSTEM, user(SKY)], "completion": [bot(BLUE)]},
    ], [
        {"prompt": "Say hi.", "response": "hi", "style": "terse"},
        {"prompt": SKY, "response": BLUE},
        {"prompt": [SYSTEM, user(SKY)], "response": BLUE},
    ]),
    "chat messages": (read_demos, [
        {"messages": [user(SKY), bot(BLUE)], "family": "color"},
        {"messages": [SYSTEM, user("Add 2 and 3."), bot("5")]},
        {"messages": [user("Hi!"), bot("Hello."), user("Add 2 and 3."), {"role": "assistant", "content": "5",
                                                                       "name": "bot"}]},
    ], [
        {"prompt": SKY, "response": BLUE, "family": "color"},
        {"prompt": [SYSTEM, user("Add 2 and 3.")], "response": "5"},
        {"prompt": [user("Hi!"), bot("Hello."), user("Add 2 and 3.")], "response": "5"},
    ]),
    "pairs": (read_comparisons, [
        {"prompt": SKY, "chosen": BLUE, "rejected": GREEN, "source": "x"},
        {"prompt": [user(SKY)], "chosen": [bot(BLUE)], "rejected": [bot(GREEN)]},       # TRL conversational
        {"prompt": SKY, "chosen": [user(SKY), bot(BLUE)], "rejected": [user(SKY), bot(GREEN)]},  # trl-style
        {"chosen": [user(SKY), bot(BLUE)], "rejected": [user(SKY), bot(GREEN)]},        # TRL implicit prompt
        {"chosen": [SYSTEM, user(SKY), bot(BLUE)], "rejected": [SYSTEM, user(SKY), bot("")]},
    ], [
        {"prompt": SKY, "responses": [BLUE, GREEN], "ranking": [0, 1], "source": "x"},
        {"prompt": SKY, "responses": [BLUE, GREEN], "ranking": [0, 1]},
        {"prompt": SKY, "responses": [BLUE, GREEN], "ranking": [0, 1]},
        {"prompt": SKY, "responses": [BLUE, GREEN], "ranking": [0, 1]},
        {"prompt": [SYSTEM, user(SKY)], "responses": [BLUE, ""], "ranking": [0, 1]},
    ]),
    "hh-rlhf": (read_comparisons, [HH_1, {**HH_3, "subset": "helpful-base"}], [
        {"prompt": "How do I get my cat to stop scratching the couch?",
         "responses": ["Put a scratching post next to the couch and praise her when she uses it.",
                       "Cats scratch."], "ranking": [0, 1]},
        {"prompt": TRIP_PROMPT, "responses": ["Take the train to Sintra for the palaces.",
                                              "Lisbon is in Portugal."], "ranking": [0, 1],
         "subset": "helpful-base"},
    ]),
    "prompts from anything": (read_prompts, [
        {"prompt": SKY, "family": "color", "answer": "blue"},
        {"prompt": SKY, "response": BLUE, "family": "color"},              # a demonstration
        {"prompt": SKY, "completion": BLUE},
        {"messages": [user(SKY), bot(BLUE)]},                              # a chat ending with the reply
        {"messages": [SYSTEM, user(SKY)]},                                 # ... or with the user's turn
        {"prompt": SKY, "chosen": BLUE, "rejected": GREEN},                # a pair
        {"prompt": SKY, "responses": [BLUE, GREEN, ""], "ranking": [2, 1, 0], "labeler": "train"},
        {"chosen": [user(SKY), bot(BLUE)], "rejected": [user(SKY), bot(GREEN)]},
        HH_3,
    ], [
        {"prompt": SKY, "family": "color", "answer": "blue"},
        {"prompt": SKY, "family": "color"},
        {"prompt": SKY},
        {"prompt": SKY},
        {"prompt": [SYSTEM, user(SKY)]},
        {"prompt": SKY},
        {"prompt": SKY, "labeler": "train"},
        {"prompt": SKY},
        {"prompt": TRIP_PROMPT},
    ]),
}


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize("fmt", TWINS)
def test_each_format_reads_as_its_canonical_twin(tmp_path, fmt):
    read, lines, twins = TWINS[fmt]
    got, want = read(write(tmp_path / "a.jsonl", lines)), read(write(tmp_path / "b.jsonl", twins))
    assert got == want == twins
    assert [r.line for r in got] == list(range(1, len(lines) + 1))
    write_jsonl(str(tmp_path / "c.jsonl"), got)            # canonical, in the twin's key order
    assert (tmp_path / "c.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_text().encode()


def test_hh_round_trips_under_the_dialogue_template(tmp_path):
    tok = get_tokenizer("bytes", template="dialogue")
    assert tok.template == "dialogue" and get_tokenizer().template == "instruction"
    for raw, rec in zip([HH_1, HH_3], read_comparisons(write(tmp_path / "hh.jsonl", [HH_1, HH_3]))):
        for text, response in zip([raw["chosen"], raw["rejected"]], rec["responses"]):
            assert tok.format_prompt(rec["prompt"]) + " " + response == text
            ids = tok.encode_prompt(rec["prompt"]) + tok.encode_response(response)
            assert tok.decode(ids) == text + "<|endoftext|>"
    # and a dialogue written by format_prompt reads back as the same prompt
    line = {"chosen": format_prompt(TRIP_PROMPT, "dialogue") + " a", "rejected": format_prompt(TRIP_PROMPT, "dialogue") + " b"}
    assert read_prompts(write(tmp_path / "p.jsonl", [line]))[0]["prompt"] == TRIP_PROMPT


def test_templates():
    assert format_prompt("Add 2 and 3.") == "Instruction: Add 2 and 3.\nResponse:" == \
        TEMPLATES["instruction"].format(prompt="Add 2 and 3.")
    assert format_prompt("Hi {x}", "dialogue") == "\n\nHuman: Hi {x}\n\nAssistant:"
    assert format_prompt([user("Hi {x}")], "dialogue") == format_prompt("Hi {x}", "dialogue")
    assert format_prompt([SYSTEM, user("a"), bot("b"), user("c")], "dialogue") == \
        "Be brief.\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
    with pytest.raises(UserError, match=r"multi-turn prompt .* needs --template=dialogue"):
        format_prompt([user("a"), bot("b"), user("c")])
    with pytest.raises(UserError, match=r"--template='chatml': choose instruction or dialogue"):
        get_tokenizer("bytes", template="chatml")
    tok = get_tokenizer()
    with pytest.raises(UserError, match="--template=dialogue"):
        tok.encode_prompt([SYSTEM, user("a")])


def test_check_template_names_each_multi_turn_line(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": SKY}, HH_3, {"messages": [SYSTEM, user(SKY)]}])
    records = read_prompts(path)
    check_template(records, path, "dialogue")               # the dialogue template holds them all
    check_template(records[:1], path, "instruction")
    with pytest.raises(UserError) as e:
        check_template(records, path, "instruction")
    lines = str(e.value).splitlines()
    assert lines[0] == f"{path}: 2 bad lines; the instruction template cannot hold these prompts"
    assert [line.split(": ")[0] for line in lines[1:]] == [f"{path}:2", f"{path}:3"]
    assert all("prompt: a multi-turn prompt" in line and "--template=dialogue" in line for line in lines[1:])


@pytest.mark.parametrize("read, line, msg", [
    (read_demos, {"messages": [user("hi")]},
     "messages: the last message should be the assistant's reply, got the user's"),
    (read_demos, {"messages": [bot("hi")]}, "messages: no user turn before the assistant's reply"),
    (read_demos, {"messages": [user("a"), bot("b"), bot("c")]},
     "messages: the last message should be the user's, got the assistant's"),
    (read_demos, {"messages": [user("hi"), {"role": "bot", "content": "x"}]},
     'messages[1].role: "bot": expected user or assistant (or system, first)'),
    (read_demos, {"messages": [user("hi"), SYSTEM, bot("x")]},
     'messages[1].role: "system": expected user or assistant (or system, first)'),
    (read_demos, {"messages": [user("hi"), {"role": "assistant"}]}, "messages[1].content: missing"),
    (read_demos, {"messages": [user("hi"), bot([{"type": "text"}])]},
     "messages[1].content: expected a string, got a list"),
    (read_demos, {"messages": [user(" "), bot("x")]}, "messages[0].content: empty string"),
    (read_demos, {"messages": []}, "messages: expected a list of messages, got an empty list"),
    (read_demos, {"messages": ["hi"]}, 'messages[0]: expected {"role": ..., "content": ...}, got a string'),
    (read_demos, {"prompt": SKY, "completion": [user(BLUE)]},
     "completion: the last message should be the assistant's reply, got the user's"),
    (read_comparisons, {"prompt": [user(SKY), bot(BLUE)], "chosen": "a", "rejected": "b"},
     "prompt: the last message should be the user's, got the assistant's"),
    (read_comparisons, {"prompt": SKY, "chosen": [user("Other?"), bot(BLUE)], "rejected": [bot(GREEN)]},
     "chosen: the messages before the reply are not the prompt"),
    (read_comparisons, {"chosen": [user(SKY), bot(BLUE)], "rejected": [user("Sky?"), bot(GREEN)]},
     "rejected: its conversation before the reply differs from chosen's (the implicit prompt is "
     "their shared start)"),
    (read_comparisons, {"chosen": [user(SKY), bot(BLUE)], "rejected": GREEN},
     "rejected: expected a list of messages, got a string"),
    (read_comparisons, {"chosen": BLUE, "rejected": GREEN},
     r'chosen: not an HH-RLHF dialogue ("\n\nHuman: ...\n\nAssistant: ..."); give the prompt in a prompt field'),
    (read_comparisons, {"chosen": HH_3["chosen"], "rejected": HH_3["rejected"].replace("May", "June")},
     f"rejected: chosen and rejected differ at character {TRIP.index('May')}, before their last "
     r'"\n\nAssistant:" (an HH-RLHF pair shares the dialogue up to it)'),
    (read_comparisons, {"chosen": "x"}, "rejected: missing (no known format; nearest is chosen/rejected)"),
    (read_prompts, {"messages": [SYSTEM]}, "messages: the last message should be the user's, got the system's"),
    (read_prompts, {"question": SKY, "id": 3},
     "prompt: missing (no known format; nearest is prompt; unknown keys: question, id)"),
])
def test_bad_lines_of_the_new_formats(tmp_path, read, line, msg):
    path = write(tmp_path / "x.jsonl", [{"prompt": "fine", "response": "r", "chosen": "a", "rejected": "b"}, line])
    with pytest.raises(UserError) as e:
        read(path)
    assert str(e.value).splitlines()[1:] == [f"{path}:2: {msg}"]
