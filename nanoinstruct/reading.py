"""Reading an assertion as a careful labeler reads it: which words a response asserts, which
it denies, and which it only offers (a hedge, a question, one of alternatives). The world's
judge (world.judge) reads every response through this; it knows nothing of the world.

    read("7 isn't even, it's odd.")  ->  [("7", 1), ("is", 1), ("even", -1), ("it", 1), ("is", 1), ("odd", 1)]
"""

import re

WORD_RE = re.compile(r"[A-Za-z]+|\d+")

# The rules, in the order read() applies them. Apostrophe look-alikes become "'",
# contractions are spelled out ("isn't" -> "is not", "aint" too), and a few phrases
# become the word they mean ("anything but" -> not, "non-odd" -> not odd, "not sure" ->
# unsure, "more than" -> about). Sentences end at . ! ? (not inside "22.23"); clauses at
# commas, semicolons, colons, brackets, dashes and joining words. Each word is asserted or
# denied by the parity of the negators before it in its clause ("7 is not not odd" asserts
# odd; "avoid", "wrong" and "hardly" negate too), or neither where the clause hedges
# ("maybe odd", "about 23") or the sentence asks ("Is 7 odd?", or "Is it odd" unmarked). A
# clause opened by "and"/"or" with no verb of its own goes on from the one before ("not red
# or blue" denies both). A clause opened by "or" (not hedged) offers alternatives, and
# neither it nor the one before asserts its predicate ("23 or 24", "7 is odd or even"). A
# negation with nothing after it in a one-clause sentence denies what came before it ("Odd
# is wrong.", "Odd is not the answer."). A clause's leading "no" is an interjection only
# when it stands alone ("No, 7 is odd."; "No food." denies food). Number words are read as
# digits ("Eight is odd." -> 8). Nothing at all is said by a response the labeler cannot be
# sure of: one with a word it cannot read (a look-alike letter, "n0t", "-23", "22.23", "o-d-d",
# "23 thousand"; the prompt's own words, such as "u6j2f5", are read as written), a clause
# that only hedges or retracts ("Odd, I guess.", "Not sure, but odd.", "Odd. NOT!", "Odd, if
# I had to guess."), or, in a sentence of several clauses, a negation that negates nothing
# ("Odd, 479 is not.", "479 is not, in fact, odd.").
APOSTROPHES = re.compile(r"[‘’ʼ´`＇′]")
CONTRACTIONS = [(r"\bcan'?t\b|\bcannot\b", "can not"), (r"\bwon't\b", "will not"), (r"\bain'?t\b", "is not"),
                (r"n't\b", " not"), (r"\b(is|are|was|were|do|does|did|has|have|had|could|would|should)nt\b", r"\1 not"),
                (r"'s\b", " is"), (r"'re\b", " are"), (r"'m\b", " am"), (r"'ll\b", " will"),
                (r"'ve\b", " have"), (r"'d\b", " would"), (r"\banything but\b|\bfar from\b", "not"),
                (r"\bnon-", "not "), (r"\bnot (sure|certain)\b", "unsure"), ("？", "?"),
                (r"\b(more|less|fewer|greater|bigger|smaller|larger|other) than\b", "about")]
NEGATORS = {"not", "no", "never", "neither", "nor", "none", "without", "nothing", "nobody", "hardly", "scarcely",
            "forget", "opposite",
            "barely", "avoid", "withhold", "skip", "stop", "remove", "away", "bad", "harmful", "dangerous",
            "wrong", "false", "incorrect", "untrue", "lie"}
HEDGES = {"maybe", "perhaps", "possibly", "probably", "might", "guess", "likely", "unlikely", "think",
          "believe", "suppose", "seems", "seem", "may", "unsure", "about", "around", "approximately",
          "roughly", "nearly", "almost", "between", "thinks", "believes", "doubt", "presumably", "apparently",
          "if", "could", "suspect", "assume", "kidding", "joking", "hopefully", "reckon", "feel",
          "guessing", "sometimes", "often", "usually", "kind", "sort", "know", "knows", "idea"}
# words that make a number something else ("23 thousand", "twice 7"): the labeler cannot read it
MAGNITUDES = {"hundred", "thousand", "million", "billion", "half", "twice", "double", "triple", "point",
              "percent", "squared", "minus", "negative"}
JOINS = {"but", "and", "or", "nor", "because", "although", "though", "however"}
VERBS = {"is", "are", "was", "were", "am", "be", "do", "does", "did", "can", "will", "would",
         "could", "should", "has", "have"}
QUESTION_VERBS = {"is", "are", "was", "were", "am", "does", "did", "can", "could", "will", "would", "should", "has"}
SUBJECTS = {"it", "this", "that", "the", "a", "an", "there", "he", "she", "they", "you", "we", "i"}
BESIDE_HEDGE = {"i", "it", "so", "that", "this", "we", "you", "is", "am", "are", "just", "my", "who", "of"}
# what may follow a negation that negates nothing ("Odd is not the answer.", "Food is bad for it.")
FILLERS = {"the", "a", "an", "answer", "true", "right", "correct", "case", "so", "it", "that", "this",
           "really", "actually", "quite", "exactly", "at", "all", "for", "from", "him", "her", "them", "me", "us",
           "needed", "necessary", "safe", "good", "premise", "question", "claim", "statement"}
NUMBER_NAMES = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
SENTENCE_RE = re.compile(r"(?:[^.!?\n]|[.!?](?=[^\s.!?]))+[.!?]*")
CLAUSE_RE = re.compile(r"[,;:()\[\]]|\s[-–—]+\s|[–—]")
TOKEN_RE = re.compile(r"[^\s+=*×&]+")
STRIP = "\"'“”«».!?…"



def normalise(text):
    text = APOSTROPHES.sub("'", text)
    for pattern, spelled in CONTRACTIONS:
        text = re.sub(pattern, spelled, text, flags=re.I)
    return text


def tokens(text):
    """The words of text: runs between spaces and + = * × &, quotes and end marks stripped;
    a run of dashes or bullets alone ("- cat", "spade -> edaps") is no word."""
    return [w for w in (t.strip(STRIP) for t in TOKEN_RE.findall(text)) if w and not set(w) <= set("-–—•·>")]


def clauses_of(sentence):
    """A sentence's clauses, each a list of words: cut at , ; : ( ) [ ] and dashes, and before
    a joining word ("odd but not even" -> [odd], [but, not, even])."""
    clauses = []
    for chunk in CLAUSE_RE.split(sentence):
        clauses.append([])
        for w in tokens(chunk):
            if clauses[-1] and w.lower() in JOINS:
                clauses.append([])
            clauses[-1].append(w)
    return [c for c in clauses if c]


def parse(text, known=frozenset()):
    """-> (words, unsure, alternatives): read()'s [word, sign] pairs with the signs their
    clauses give them, whether the response as a whole is one the labeler cannot be sure of,
    and the positions of the words offered as alternatives ("23 or 24")."""
    out, unsure, alternatives = [], False, set()
    question, since = None, 0      # a restated question, kept for a "Yes."/"No." after it; where "or" reaches back
    for sentence in SENTENCE_RE.findall(normalise(text)):
        clauses = clauses_of(sentence)
        if not clauses:
            continue
        first = [w.lower() for w in clauses[0][:2]]
        unmarked = first[0] in QUESTION_VERBS and len(first) > 1 and (first[1] in SUBJECTS or first[1].isdigit())
        asks = bool(re.search(r"\?[?!.]*\s*$", sentence)) or unmarked          # "Is it odd?", "Is it odd"
        said_before = any(sign for _, sign in out)
        if asks and not said_before:     # the question restated ("Is 7 even? No, 7 is odd."): not read,
            low = {w.lower() for c in clauses for w in c}       # unless it doubts ("Who knows? Odd.")
            unsure = unsure or bool(HEDGES & low) and low <= HEDGES | BESIDE_HEDGE | VERBS
            words = [w for c in clauses for w in c]
            question = " ".join(words[1:] if words[0].lower() in QUESTION_VERBS else words) + "."
            continue
        answered = bool(question) and first[0] in ("yes", "no")
        if answered:           # "Is 7 even? No, ..." denies what it asked; "Is it not odd? Yes." denies odd
            out += [[w, sign if first[0] == "yes" else -sign] for w, sign in parse(question, known)[0]]
        question = None
        unsure = unsure or any(not (WORD_RE.fullmatch(w) or w in known) or w.lower() in MAGNITUDES
                               for c in clauses for w in c)
        neg, hedged, pending, since_set = 0, False, None, False   # pending: where a clause negating nothing began
        for k, clause in enumerate(clauses):
            low = [w.lower() for w in clause]
            goes_on = low[0] in ("and", "or") and not VERBS & set(low)   # "... not red, or blue"
            if not goes_on:                                               # a new assertion
                if pending is not None:                                  # "Odd, 479 is not."
                    unsure = True
                neg, hedged, pending = 0, False, None
            elif low[0] == "and" and (len(low) < 2 or low[1] not in NEGATORS):   # "not even, and odd"
                neg = 0
            hedged = hedged or asks or bool(HEDGES & set(low))
            said_before = any(sign for _, sign in out)
            # a clause that says nothing of its own: only no, not, maybe, or, a question ("That is
            # wrong.", "Not at all", "I guess", "Or is it?"); its last word says something if it
            # is a verb ("It is not not was.") or any verb in capitals ("not WAS")
            marked = bool((NEGATORS | HEDGES | {"or", "nope"}) & set(low)) or asks
            content = [w for i, (w, lw) in enumerate(zip(clause, low))
                       if lw not in NEGATORS | HEDGES | BESIDE_HEDGE | FILLERS | JOINS | {"nope"} | VERBS
                       or lw in VERBS and (i == len(clause) - 1 and i > 0 and low[i - 1] in NEGATORS
                                           or w.isupper() and len(w) > 1)]
            empty = marked and not content
            only_hedges = empty and bool(HEDGES & set(low))                  # "Odd, I guess.", "Not sure, but odd."
            takes_back = empty and said_before and k == len(clauses) - 1 and not (answered and k == 0) \
                and (asks or low[0] == "or" or bool((NEGATORS | {"nope"}) & set(low)))   # "Odd. No.", "Odd, no."
            if only_hedges or takes_back or said_before and low[0] == "if":  # "Odd, if I had to guess."
                unsure = True
            # "No, that is wrong: 7 is odd." and "Not at all, 7 is odd." say nothing; but "It is
            # not, in fact, tan." goes on into clauses with no verb of their own
            goes_into = k + 1 < len(clauses) and not VERBS & {w.lower() for w in clauses[k + 1]}
            if empty and not (NEGATORS & set(low) and goes_into):
                continue
            here, negators = len(out), 0
            for i, (w, lw) in enumerate(zip(clause, low)):
                if lw in NEGATORS and not (i == 0 and lw == "no" and len(clause) == 1):
                    # "not not odd" asserts odd; "not even not odd" denies both
                    neg = neg + 1 if i > 0 and low[i - 1] in NEGATORS or i == 0 and neg else 1
                    negators += 1
                    if set(low[i + 1:]) <= FILLERS and pending is None:
                        pending = here
                elif not (i == 0 and lw in JOINS | {"no"}):
                    # a number word is a number, but for "one" after a/the/odd ("an odd one")
                    a_number = lw != "one" or i == 0 or low[i - 1] not in SUBJECTS | {"odd", "even", "no"}
                    out.append([NUMBER_NAMES.get(lw, w) if a_number else w, 0 if hedged else -1 if neg % 2 else 1])
                    if lw not in FILLERS:
                        pending = None
            # alternatives ("odd or even", "23, no, or 24", "odd. Or even."): a clause opened by
            # "or" and what was said since the last sentence's or this one's first verb
            verbs = [j for j in range(here, len(out)) if out[j][0].lower() in VERBS]
            after = verbs[-1] + 1 if verbs else here
            if low[0] == "or" and not hedged:
                for j in list(range(since, here)) + list(range(after, len(out))):
                    if out[j][1] > 0:
                        out[j][1] = 0
                        alternatives.add(j)
            if not since_set:        # the sentence's first clause read: "or" reaches back to its predicate
                since_set = True
                if low[0] != "or":   # "odd. Or even." reaches back into the sentence before
                    since = after
        if pending is not None:
            if len(clauses) > 1:
                unsure = True
            if negators % 2:                   # "Odd is wrong." denies odd; "Even is not wrong." does not
                for o in out[pending:]:
                    o[1] = -o[1]
    return out, unsure, alternatives


def read(text, known=frozenset()):
    """-> [(word, sign)]: the response's words in order (negators left out, case kept, number
    words as digits), sign +1 asserted, -1 denied, 0 neither (a hedge, a question, one of
    alternatives). Nothing is said in a response the labeler cannot be sure of: one with an
    unreadable word, a clause that only hedges or takes back what was said, or a negation
    that negates nothing in a sentence of several clauses. known: words read as written (the
    prompt's)."""
    out, unsure, _ = parse(text, known)
    return [(w, 0 if unsure else sign) for w, sign in out]
