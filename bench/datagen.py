"""Synthetic customer emails: the one vocabulary behind the sample and the benchmarks.

Every email is composed from hand-written fragments (greetings, topic facts,
feelings, requests, sign-offs, whole emails in Spanish, German and Japanese)
with slots ({order}, {product}, {amount}, ...) filled from small pools, so the
texts read naturally while staying cheap to produce: 100,000 records take
about two seconds (generation plus JSON) on a slow CI core. The fragments and
pools live in bench/data/vocabulary.json, loaded once at import; this module is
the code that composes them.

The company in the texts is a fictional online home-goods shop, "Larkspur",
with a mobile app and a paid membership, "Larkspur Plus".

API
    generate_records(n, seed=0, customers=None) -> Iterator[dict]
        n valid records with unique ids "em-000001"..; deterministic per seed.
    write_jsonl(path, n, seed=0, customers=None) -> int
        the same records as JSON Lines (UTF-8); returns the count written.
    compose_email(rng, topic=None, mood=None, length=None, language=None, channel="email")
        one {"subject", "text"} pair; samples/make_emails.py builds on it.

CLI
    python -m bench.datagen --records 100000 --out emails.jsonl [--seed 0] [--customers 15000]
"""
from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

#: Fields of every record, in output order.
FIELDS = ("id", "customer_id", "subject", "text", "received_at", "channel")

COMPANY = "Larkspur"

TOPICS = ("billing", "shipping", "bug", "praise", "cancellation", "feature_request", "returns", "account")
TOPIC_WEIGHTS = (18, 20, 14, 10, 8, 9, 11, 10)

MOODS = ("positive", "neutral", "negative", "mixed", "sarcastic")
#: Mood weights per topic (same order as MOODS).
MOOD_WEIGHTS = {
    "billing": (10, 30, 40, 8, 12),
    "shipping": (14, 22, 40, 10, 14),
    "bug": (6, 34, 40, 8, 12),
    "praise": (90, 0, 0, 10, 0),
    "cancellation": (6, 30, 46, 14, 4),
    "feature_request": (30, 46, 8, 14, 2),
    "returns": (16, 34, 34, 8, 8),
    "account": (8, 50, 32, 6, 4),
}

LENGTHS = ("oneliner", "short", "medium", "long")
LENGTH_WEIGHTS = (12, 40, 34, 14)

CHANNELS = ("email", "web_form", "chat", "app")
CHANNEL_WEIGHTS = (70, 15, 8, 7)

LANGUAGES = ("en", "es", "de", "ja")
#: Share of non-English emails in generated data (split evenly among es/de/ja).
NON_ENGLISH_SHARE = 0.04

# --------------------------------------------------------------------------
# The vocabulary: bench/data/vocabulary.json, loaded once at import
#
# Slot pools (PRODUCTS are singular, so "my {product} is" and "{a_product}"
# read right), fragments shared by every topic (GREETINGS, SIGNOFFS, OPENERS,
# CLOSERS, ONELINERS, EMOJI, by mood where a dict), TOPIC_FRAGMENTS (per topic:
# "scenarios", each one concrete situation with "subjects" by tone -- positive /
# neutral / negative, a missing tone falls back -- neutral "facts" and "asks";
# and "feelings" by mood), NEUTRAL_REMARKS (stand in for feelings in a neutral
# email), RESOLVED_ASKS (close a positive email about a problem that was
# solved), TIMELINES (background paragraphs of long emails, by story) and
# FOREIGN_EMAILS (whole emails by language: (mood, subject, text)).
#
# JSON lists load as tuples. Order is meaningful: items are picked by index.
# --------------------------------------------------------------------------

VOCABULARY_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "vocabulary.json")


def _tuples(value: Any) -> Any:
    """JSON lists as tuples, all the way down (dicts keep their key order)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _load_vocabulary(path: str = VOCABULARY_PATH) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        vocab = {k: _tuples(v) for k, v in json.load(f).items() if not k.startswith("_")}
    topics = vocab["topic_fragments"]
    if set(topics) != set(TOPICS):
        raise ValueError(f"{path}: topic_fragments has {sorted(topics)}, expected {sorted(TOPICS)}")
    for table in ("openers", "closers", "oneliners", "emoji"):
        if set(vocab[table]) != set(MOODS):
            raise ValueError(f"{path}: {table} has {sorted(vocab[table])}, expected {sorted(MOODS)}")
    if set(vocab["foreign_emails"]) != set(LANGUAGES[1:]):
        raise ValueError(f"{path}: foreign_emails has {sorted(vocab['foreign_emails'])}")
    return vocab


_VOCAB = _load_vocabulary()

PRODUCTS: Tuple[str, ...] = _VOCAB["products"]
CARRIERS: Tuple[str, ...] = _VOCAB["carriers"]
AGENTS: Tuple[str, ...] = _VOCAB["agents"]
FEATURES: Tuple[str, ...] = _VOCAB["features"]
APPS: Tuple[str, ...] = _VOCAB["apps"]
ERRORS: Tuple[str, ...] = _VOCAB["errors"]
DEVICES: Tuple[str, ...] = _VOCAB["devices"]
PLANS: Tuple[str, ...] = _VOCAB["plans"]
NAMES: Tuple[str, ...] = _VOCAB["names"]
MONTHS: Tuple[str, ...] = _VOCAB["months"]
DAY_PHRASES: Tuple[str, ...] = _VOCAB["day_phrases"]
GREETINGS: Tuple[str, ...] = _VOCAB["greetings"]
SIGNOFFS: Tuple[str, ...] = _VOCAB["signoffs"]
OPENERS: Dict[str, Tuple[str, ...]] = _VOCAB["openers"]
CLOSERS: Dict[str, Tuple[str, ...]] = _VOCAB["closers"]
ONELINERS: Dict[str, Tuple[str, ...]] = _VOCAB["oneliners"]
EMOJI: Dict[str, Tuple[str, ...]] = _VOCAB["emoji"]
TOPIC_FRAGMENTS: Dict[str, Dict] = _VOCAB["topic_fragments"]
NEUTRAL_REMARKS: Tuple[str, ...] = _VOCAB["neutral_remarks"]
RESOLVED_ASKS: Tuple[str, ...] = _VOCAB["resolved_asks"]
TIMELINES: Dict[str, Tuple[str, ...]] = _VOCAB["timelines"]
FOREIGN_EMAILS: Dict[str, Tuple[Tuple[str, str, str], ...]] = _VOCAB["foreign_emails"]

# --------------------------------------------------------------------------
# Slots
# --------------------------------------------------------------------------


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiouAEIOU" else "a ") + noun


def _date(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return _pick(rng, DAY_PHRASES)
    return f"{_pick(rng, MONTHS)} {1 + int(rng.random() * 28)}"


def _product2(rng: random.Random, slots: "Slots") -> str:
    first = slots["product"]
    while True:
        other = _pick(rng, PRODUCTS)
        if other != first:
            return other


_SLOT_MAKERS = {
    "order": lambda rng, s: f"LS-{1000000 + int(rng.random() * 8999999)}",
    "product": lambda rng, s: _pick(rng, PRODUCTS),
    "product2": lambda rng, s: _product2(rng, s),
    "a_product": lambda rng, s: _article(s["product"]),
    "a_product2": lambda rng, s: _article(s["product2"]),
    "amount": lambda rng, s: f"${8 + int(rng.random() * 472)}.{_pick(rng, ('00', '49', '95', '99'))}",
    "carrier": lambda rng, s: _pick(rng, CARRIERS),
    "agent": lambda rng, s: _pick(rng, AGENTS),
    "feature": lambda rng, s: _pick(rng, FEATURES),
    "app": lambda rng, s: _pick(rng, APPS),
    "error": lambda rng, s: _pick(rng, ERRORS),
    "device": lambda rng, s: _pick(rng, DEVICES),
    "plan": lambda rng, s: _pick(rng, PLANS),
    "name": lambda rng, s: _pick(rng, NAMES),
    "initial": lambda rng, s: chr(65 + int(rng.random() * 26)),
    "days": lambda rng, s: str(4 + int(rng.random() * 21)),
    "count": lambda rng, s: str(2 + int(rng.random() * 4)),
    "years": lambda rng, s: str(2 + int(rng.random() * 8)),
    "last4": lambda rng, s: "%04d" % int(rng.random() * 10000),
    "date": lambda rng, s: _date(rng),
    "year": lambda rng, s: "2025",
    "company": lambda rng, s: COMPANY,
}


class Slots(dict):
    """Slot values made on first use, then reused within one email."""

    __slots__ = ("rng",)

    def __init__(self, rng: random.Random):
        super().__init__()
        self.rng = rng

    def __missing__(self, key: str) -> str:
        value = _SLOT_MAKERS[key](self.rng, self)
        self[key] = value
        return value


# --------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------

#: Subject tones to try, in order, for each mood.
_SUBJECT_TONES = {
    "positive": ("positive", "neutral"),
    "neutral": ("neutral", "negative", "positive"),
    "negative": ("negative", "neutral"),
    "mixed": ("neutral", "negative", "positive"),
    "sarcastic": ("negative", "neutral"),
}


def _pick(rng: random.Random, pool: Sequence[str]) -> str:
    return pool[int(rng.random() * len(pool))]


def _picks(rng: random.Random, pool: Sequence[str], k: int) -> List[str]:
    """Up to k distinct items of pool, in pool order (cheaper than rng.sample)."""
    n = len(pool)
    if k >= n:
        return list(pool)
    if k == 1:
        return [pool[int(rng.random() * n)]]
    chosen = set()
    while len(chosen) < k:
        chosen.add(int(rng.random() * n))
    return [pool[i] for i in sorted(chosen)]


def _facts(rng: random.Random, facts: Sequence[str], k: int) -> List[str]:
    """The scene-setting first fact (usually), then k-1 more in order."""
    if k == 1 and rng.random() < 0.25:
        return [_pick(rng, facts)]
    return [facts[0]] + _picks(rng, facts[1:], k - 1)


def _weighted(rng: random.Random, items: Sequence[str], cum: Sequence[float]) -> str:
    return items[bisect.bisect_right(cum, rng.random() * cum[-1])]


def _cum(weights: Sequence[float]) -> List[float]:
    return list(itertools.accumulate(weights))


_TOPIC_CUM = _cum(TOPIC_WEIGHTS)
_HAPPY_SCENARIOS = {t: [s for s in f["scenarios"] if "positive" in s["subjects"]] or f["scenarios"]
                    for t, f in TOPIC_FRAGMENTS.items()}
_MOOD_CUM = {t: _cum(w) for t, w in MOOD_WEIGHTS.items()}
_LENGTH_CUM = _cum(LENGTH_WEIGHTS)
_CHANNEL_CUM = _cum(CHANNEL_WEIGHTS)


def _subject(rng: random.Random, scenario: Dict, mood: str) -> str:
    subjects = scenario["subjects"]
    for tone in _SUBJECT_TONES[mood]:
        if tone in subjects:
            return _pick(rng, subjects[tone])
    return _pick(rng, next(iter(subjects.values())))


def _feelings(rng: random.Random, table: Dict[str, Sequence[str]], mood: str, k: int) -> List[str]:
    """About k distinct sentences carrying the mood (mixed: both sides; neutral: plain remarks)."""
    if mood == "neutral":
        return _picks(rng, NEUTRAL_REMARKS, k)
    if mood == "mixed":
        own = table.get("mixed") or ()
        if own and k == 1 and rng.random() < 0.6:
            return [_pick(rng, own)]
        out = [_pick(rng, table["positive"]), "That said, " + _lower_first(_pick(rng, table["negative"]))]
        if k >= 3 and own:
            out.append(_pick(rng, own))
        return out
    out = _picks(rng, table.get(mood) or table["negative"], k)
    if rng.random() < 0.15:
        out[-1] = f"{out[-1]} {_pick(rng, EMOJI[mood])}"
    return out


def _lower_first(s: str) -> str:
    """'The box...' -> 'the box...', leaving 'I ...', "I've", acronyms and {slots} alone."""
    if len(s) > 1 and s[0].isupper() and s[1].islower():
        return s[0].lower() + s[1:]
    return s


def compose_email(rng: random.Random, topic: Optional[str] = None, mood: Optional[str] = None,
                  length: Optional[str] = None, language: Optional[str] = None,
                  channel: str = "email") -> Dict[str, str]:
    """One email as {"subject", "text"}; every choice not given is drawn from rng.

    topic in TOPICS, mood in MOODS, length in LENGTHS, language in LANGUAGES,
    channel in CHANNELS ("chat" and "app" messages skip greetings and sign-offs).
    """
    slots = Slots(rng)
    if language is None:
        language = "en" if rng.random() >= NON_ENGLISH_SHARE else _pick(rng, LANGUAGES[1:])
    if language != "en":
        candidates = [e for e in FOREIGN_EMAILS[language] if mood is None or e[0] == mood]
        _, subject, text = _pick(rng, candidates or FOREIGN_EMAILS[language])
        return {"subject": subject.format_map(slots), "text": text.format_map(slots)}

    topic = topic or _weighted(rng, TOPICS, _TOPIC_CUM)
    mood = mood or _weighted(rng, MOODS, _MOOD_CUM[topic])
    length = length or _weighted(rng, LENGTHS, _LENGTH_CUM)
    frag = TOPIC_FRAGMENTS[topic]
    # A happy email about a problem topic is about one that got solved.
    scenario = _pick(rng, _HAPPY_SCENARIOS[topic] if mood == "positive" else frag["scenarios"])
    subject = _subject(rng, scenario, mood)
    facts, feelings = scenario["facts"], frag["feelings"]
    asks = RESOLVED_ASKS if mood == "positive" and topic not in ("praise", "feature_request") else scenario["asks"]

    if length == "oneliner":
        if rng.random() < 0.5:
            text = _pick(rng, ONELINERS[mood])
        else:
            text = " ".join(_feelings(rng, feelings, mood, 1))
    else:
        casual = channel in ("chat", "app")
        parts: List[str] = []
        if not casual and rng.random() < 0.85:
            parts.append(_pick(rng, GREETINGS))
        if length == "short":
            paragraph = _facts(rng, facts, 1) + _feelings(rng, feelings, mood, 1)
            if rng.random() < 0.6:
                paragraph.append(_pick(rng, asks))
            parts.append(" ".join(paragraph))
        elif length == "medium":
            parts.append(" ".join([_pick(rng, OPENERS[mood])] + _facts(rng, facts, 2)))
            parts.append(" ".join(_feelings(rng, feelings, mood, 1 + (rng.random() < 0.5)) + [_pick(rng, asks)]))
            parts.append(_pick(rng, CLOSERS[mood]))
        else:  # long
            parts.append(" ".join([_pick(rng, OPENERS[mood])] + _facts(rng, facts, 3)))
            story = ("good" if mood == "positive" else "background" if mood == "neutral" or topic == "feature_request"
                     else "problem")
            parts.append(" ".join(_picks(rng, TIMELINES[story], 3 + int(rng.random() * 3))))
            parts.append(" ".join(_feelings(rng, feelings, mood, 3)))
            parts.append(" ".join(_picks(rng, asks, 2)))
            parts.append(_pick(rng, CLOSERS[mood]))
        if not casual:
            parts.append(_pick(rng, SIGNOFFS))
        text = "\n\n".join(parts)
    if channel in ("chat", "app") and mood != "negative" and rng.random() < 0.3:
        text = text.lower()
    return {"subject": subject.format_map(slots), "text": text.format_map(slots)}


def pick_channel(rng: random.Random) -> str:
    """A channel drawn with CHANNEL_WEIGHTS."""
    return CHANNELS[bisect.bisect_right(_CHANNEL_CUM, rng.random() * _CHANNEL_CUM[-1])]


def customer_ids(rng: random.Random, count: int) -> List[str]:
    """count distinct, realistic-looking customer ids like "cust-48213"."""
    space = max(90000, count * 10)
    return [f"cust-{10000 + k}" for k in rng.sample(range(space), count)]


def customer_weights(count: int, skew: float = 0.8) -> List[float]:
    """Zipf-like weights: a few customers write a lot, most write a little."""
    return [1.0 / (rank ** skew) for rank in range(1, count + 1)]


#: received_at of the first generated record (UTC), and the mean gap between records.
START_EPOCH = 1735718400  # 2025-01-01T08:00:00Z
MEAN_GAP_SECONDS = 97


def iso_utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def generate_records(n: int, seed: int = 0, customers: Optional[int] = None) -> Iterator[dict]:
    """n valid, realistic email records with unique ids, the same for the same seed.

    customers: distinct customer ids to draw from (uneven, Zipf-like);
    default about one customer per 6.5 emails.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    k = customers if customers is not None else max(1, round(n / 6.5))
    if k < 1:
        raise ValueError(f"customers must be >= 1, got {k}")
    ids = customer_ids(rng, k)
    rng.shuffle(ids)
    cum = _cum(customer_weights(k))
    total = cum[-1]
    id_format = "em-%0{}d".format(max(6, len(str(n))))
    random_ = rng.random
    bisect_right = bisect.bisect_right
    for i in range(1, n + 1):
        channel = CHANNELS[bisect_right(_CHANNEL_CUM, random_() * _CHANNEL_CUM[-1])]
        email = compose_email(rng, channel=channel)
        yield {
            "id": id_format % i,
            "customer_id": ids[bisect_right(cum, random_() * total)],
            "subject": email["subject"],
            "text": email["text"],
            "received_at": iso_utc(START_EPOCH + (i + random_()) * MEAN_GAP_SECONDS),
            "channel": channel,
        }


_ENCODER = json.JSONEncoder(ensure_ascii=False)


def dumps(record: dict) -> str:
    """One JSON Lines line (no trailing newline), UTF-8 text kept readable.

    Same output as json.dumps(record, ensure_ascii=False), without building an encoder per call.
    """
    return _ENCODER.encode(record)


def write_jsonl(path: str, n: int, seed: int = 0, customers: Optional[int] = None) -> int:
    """Write generate_records(n, seed, customers) to path ("-" = stdout); returns n."""
    out = sys.stdout if path == "-" else open(path, "w", encoding="utf-8", newline="\n")
    try:
        batch: List[str] = []
        for record in generate_records(n, seed, customers):
            batch.append(dumps(record))
            if len(batch) >= 2000:
                out.write("\n".join(batch) + "\n")
                batch = []
        if batch:
            out.write("\n".join(batch) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return n


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.datagen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, required=True, help="number of records to write")
    parser.add_argument("--out", required=True, help="output JSON Lines file ('-' for stdout)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--customers", type=int, default=None,
                        help="distinct customer ids (default: records / 6.5)")
    args = parser.parse_args(argv)
    if args.records < 0:
        parser.error("--records must be >= 0")
    started = time.perf_counter()
    write_jsonl(args.out, args.records, seed=args.seed, customers=args.customers)
    if args.out != "-":
        print(f"wrote {args.records} records to {args.out} in {time.perf_counter() - started:.1f}s",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
