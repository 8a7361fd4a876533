"""Synthetic customer emails: the one vocabulary behind the sample and the benchmarks.

Every email is composed from hand-written fragments (greetings, topic facts,
feelings, requests, sign-offs, whole emails in Spanish, German and Japanese)
with slots ({order}, {product}, {amount}, ...) filled from small pools, so the
texts read naturally while staying cheap to produce: 100,000 records take
about two seconds (generation plus JSON) on a slow CI core.

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
import random
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

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
# Slot pools
# --------------------------------------------------------------------------

PRODUCTS = (  # singular, so "my {product} is" and "{a_product}" read right
    "linen duvet cover", "cast-iron skillet", "bamboo bath mat", "ceramic pour-over set",
    "brass floor lamp", "wool throw blanket", "oak side table", "set of four stoneware mugs",
    "velvet armchair", "pair of blackout curtains", "Dutch oven", "memory-foam pillow",
    "walnut cutting board", "rattan laundry basket", "set of glass storage jars", "bedside clock",
    "set of cotton bath towels", "standing desk", "woven jute rug", "copper kettle",
    "knife block", "outdoor string-light kit", "ceramic planter", "shower curtain",
    "espresso machine", "weighted blanket", "bookshelf", "spice rack",
    "kids' bunk bed", "mirror with a gold frame",
)


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiouAEIOU" else "a ") + noun


CARRIERS = ("UPS", "FedEx", "USPS", "DHL", "OnTrac", "Royal Mail")
AGENTS = ("Priya", "Marcus", "Dana", "Tomás", "Aiko", "Jordan", "Fatima", "Liam", "Sofia", "Kwame")
FEATURES = (
    "dark mode", "a wishlist I can share with family", "a way to export my order history to CSV",
    "split payments", "gift wrapping", "a pause button for my membership",
    "delivery time slots", "Apple Pay on the website", "saved carts across devices",
    "price-drop alerts", "a way to reorder everything from a past order in one tap",
)
APPS = ("the iOS app", "the Android app", "the website", "the mobile site")
ERRORS = (
    'an error that says "Something went wrong (code PAY-4012)"', "Error 502 Bad Gateway",
    "a blank white screen", 'a pop-up saying "Session expired" every few seconds',
    "an endless loading spinner", 'the message "Card declined" even though my bank approved it',
)
DEVICES = ("iPhone 13", "Pixel 7", "Windows laptop running Chrome", "iPad", "MacBook with Safari", "Samsung Galaxy S22")
PLANS = ("Larkspur Plus monthly plan", "Larkspur Plus annual membership", "Larkspur Plus trial")
NAMES = (
    "Emma", "Noah", "Olivia", "Liam", "Ava", "Mateo", "Sophia", "Lucas", "Mia", "Ethan", "Amara",
    "Chen", "Isabella", "Omar", "Hannah", "Raj", "Grace", "Diego", "Chloe", "Yusuf", "Zoe",
    "Benjamin", "Leila", "Samuel", "Nora", "Jamal", "Ingrid", "Kenji", "Aisha", "Patrick",
    "Rosa", "Viktor", "Maya", "Tyler", "Fiona", "Arjun", "Eleanor", "Marco", "Jess", "Dev",
)
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
DAY_PHRASES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "the weekend",
               "last week", "the 3rd", "the 14th", "the 21st", "the 28th")


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
# Fragments shared by every topic
# --------------------------------------------------------------------------

GREETINGS = ("Hi,", "Hello,", "Hi there,", "Dear Larkspur team,", "Hello support,", "Good morning,",
             "Hey,", "To whom it may concern,", "Hi team,", "Dear Sir or Madam,", "Good afternoon,")

SIGNOFFS = ("Thanks,\n{name}", "Best,\n{name}", "Kind regards,\n{name}", "Cheers,\n{name}", "— {name}",
            "{name}", "Regards,\n{name} {initial}.", "Thank you,\n{name} {initial}.",
            "Thanks,\n{name}\n\nSent from my iPhone", "Many thanks,\n{name}")

OPENERS = {
    "positive": ("I just wanted to share some good news.", "Hope you're having a great day!",
                 "Quick note to say thank you.", "I don't usually write in, but I had to this time."),
    "neutral": ("I have a quick question.", "I'm writing about order {order}.", "Hope you're well.",
                "I couldn't find the answer in your help centre, so I'm emailing instead.",
                "I'm following up on a message I sent on {date}."),
    "negative": ("I'm writing to complain about my recent order.",
                 "I'm really unhappy with how this has been handled.",
                 "I've contacted you twice already and I'm still waiting for an answer.",
                 "I'm sorry to say this, but I'm very disappointed.",
                 "This is my third email about the same problem."),
    "mixed": ("I have some good news and some bad news.",
              "I've been a happy customer for a while, but something's gone wrong.",
              "Mostly good experience so far, with one big exception."),
    "sarcastic": ("Well, here we go again.", "Congratulations, you've outdone yourselves.",
                  "Just when I thought it couldn't get any better."),
}

CLOSERS = {
    "positive": ("Thanks again!", "Keep up the great work!", "Have a lovely day.",
                 "You've made a loyal customer out of me.", "Thank you so much!"),
    "neutral": ("Thanks in advance.", "Thanks for your help.", "Looking forward to hearing from you.",
                "Let me know if you need anything else from me.", "Appreciate it."),
    "negative": ("I expect a response within 48 hours.",
                 "If this isn't sorted out I'll be disputing the charge with my bank.",
                 "Please don't send me another canned reply.",
                 "I'd like this escalated to a manager.", "I'm seriously considering shopping elsewhere."),
    "mixed": ("I'd like to keep shopping with you, so I hope this can be fixed.",
              "Otherwise, thanks — it's mostly been great.", "Hoping for a better experience next time."),
    "sarcastic": ("Can't wait to hear back. Really.", "Looking forward to the next adventure.",
                  "Thanks so much for all the help so far. 🙃"),
}

ONELINERS = {
    "positive": ("Thanks so much, all sorted! 🙏", "Got it, perfect. Thank you!", "Love it ❤️", "👍",
                 "Arrived today, looks great!", "You guys are the best 🎉", "Refund received, thanks!",
                 "Thank you {agent}, that fixed it!"),
    "neutral": ("Thanks.", "ok", "Can you send me the invoice for {order}?", "What's the status of {order}?",
                "Received, thanks.", "Please update my phone number on file.", "Is the {product} back in stock?",
                "Do you ship to Canada?"),
    "negative": ("Still no refund. Seriously?", "Where is my order?!", "Cancel my account. Now.",
                 "This is ridiculous 😡", "third time asking: where is {order}???",
                 "Worst customer service I have ever dealt with.", "Your app is broken AGAIN."),
    "mixed": ("Nice product, terrible delivery.", "Great support, shame about the app.",
              "Love the {product}, hate the packaging waste.", "Fast refund, but why did it take 3 emails?"),
    "sarcastic": ("Wow, {days} days for 'express' shipping. Impressive. 🙃",
                  "Another week, another 'we're looking into it'. Amazing.",
                  "Thanks for nothing, really appreciate it.",
                  "Oh good, the app logged me out again. My favourite feature. 👏"),
}

EMOJI = {
    "positive": ("🙂", "😊", "🎉", "🙏", "❤️", "👍", "✨"),
    "negative": ("😡", "😤", "🙄", "😞", "🤦‍♀️", "👎"),
    "mixed": ("🤷", "😕", "🙂"),
    "sarcastic": ("🙃", "🙄", "👏"),
    "neutral": ("🙂",),
}

# --------------------------------------------------------------------------
# Topic fragments
#
# Each topic has scenarios (one concrete situation each: subjects by tone,
# neutral facts, requests) and topic-level feelings by mood. Tones of
# subjects: positive / neutral / negative; a missing tone falls back.
# --------------------------------------------------------------------------

def _sc(subjects: Dict[str, Sequence[str]], facts: Sequence[str], asks: Sequence[str]) -> Dict:
    return {"subjects": subjects, "facts": tuple(facts), "asks": tuple(asks)}


TOPIC_FRAGMENTS: Dict[str, Dict] = {
    "billing": {
        "scenarios": (
            _sc({"negative": ("Charged twice for order {order}", "Double charge on my card", "Billing error — please fix"),
                 "neutral": ("Two charges on my statement?", "Billing question"),
                 "positive": ("Double charge refunded — thanks",)},
                ("I was charged {amount} twice on {date} for order {order}.",
                 "My bank statement shows two identical charges from Larkspur.",
                 "I only placed one order, and only one confirmation email arrived.",
                 "Both charges went to the card ending in {last4}."),
                ("Please refund the duplicate charge.", "Can you confirm when the second charge will be reversed?")),
            _sc({"negative": ("Refund still not received", "Where is my refund of {amount}?"),
                 "neutral": ("Refund status for order {order}",),
                 "positive": ("Refund received — thank you",)},
                ("I was told on {date} that a refund of {amount} had been issued for order {order}.",
                 "It's been {days} days and nothing has shown up on my card.",
                 "My bank says there is no pending refund from Larkspur."),
                ("Can you send me the refund reference number?", "Please confirm the date the refund was actually sent.")),
            _sc({"negative": ("Why was I billed {amount}?", "Unexpected charge of {amount}"),
                 "neutral": ("Question about my membership renewal",),
                 "positive": ("Thanks for sorting out my renewal",)},
                ("My {plan} renewed at {amount} instead of the price I signed up for.",
                 "I never received a reminder that the renewal was coming up.",
                 "Nobody told me the price was going up."),
                ("Please refund the difference.", "Can you explain the new price?")),
            _sc({"negative": ("Still no invoice for order {order}",),
                 "neutral": ("Invoice for order {order}", "VAT receipt request", "Invoice request")},
                ("I need an invoice with my company name on it for order {order}.",
                 "The invoice in my account only shows the total, not the VAT.",
                 "Our finance team needs it by the end of the month for expense reporting."),
                ("Could you send me a corrected invoice?", "Can you email the invoice as a PDF?")),
            _sc({"negative": ("Your discount code doesn't work",),
                 "neutral": ("Promo code didn't apply",)},
                ("I applied the promo code WELCOME15 at checkout but the total didn't change.",
                 "The code is still listed as valid on your homepage.",
                 "My order {order} came to {amount} without the discount."),
                ("Could you apply the discount retroactively?", "Please refund the 15% I should have saved.")),
        ),
        "feelings": {
            "negative": ("This is the second time this has happened and I'm running out of patience.",
                         "Frankly, taking money and then going quiet is not okay.",
                         "I've been a customer for {years} years and this is really disappointing.",
                         "I shouldn't have to chase you for my own money.",
                         "Nobody has answered my last two emails about this."),
            "positive": ("Thank you for fixing this so quickly — it's already sorted on my statement.",
                         "{agent} explained everything clearly and I really appreciate it.",
                         "Honestly the smoothest billing fix I've ever had with any company."),
            "sarcastic": ("Love paying twice for the same order. Really makes it feel special.",
                          "Great to see the 'automatic' refund is so automatic it needs three emails.",
                          "Wonderful how fast you take money compared to how fast you give it back."),
            "mixed": ("I like the membership a lot, but these billing surprises are making me reconsider it.",
                      "{agent} was lovely on the phone, but the money still hasn't arrived."),
        },
    },
    "shipping": {
        "scenarios": (
            _sc({"negative": ("Where is my order {order}?", "Still waiting after {days} days", "Late delivery — again"),
                 "neutral": ("Tracking for order {order}", "Order {order}"),
                 "positive": ("Order {order} arrived — thanks",)},
                ("I ordered {a_product} on {date} (order {order}).",
                 "The tracking page hasn't updated in {days} days.",
                 "Your site promised delivery within 3-5 business days.",
                 "{carrier} says the parcel is 'in transit' and can't tell me anything more."),
                ("Could you let me know where the package actually is?", "Please send a replacement or refund me.",
                 "Can you chase {carrier} for me?")),
            _sc({"negative": ("Package marked delivered but not here", "Parcel 'delivered' — it wasn't"),
                 "neutral": ("Delivered status but no parcel",)},
                ("{carrier} says order {order} was delivered on {date}, but there's nothing at my door.",
                 "I've checked with my neighbours and the building's mailroom.",
                 "The delivery photo shows a door that isn't mine."),
                ("Can you open a claim with {carrier}?", "Please send a replacement.")),
            _sc({"negative": ("Order {order} arrived damaged", "Broken {product}"),
                 "neutral": ("Damaged item in order {order}",),
                 "positive": ("Replacement {product} arrived safely",)},
                ("The box arrived crushed and the {product} inside was cracked.",
                 "There was barely any padding in the box.",
                 "I've attached photos of the box and the damage."),
                ("Please send a replacement.", "I'd like a full refund, including shipping.")),
            _sc({"negative": ("Wrong item received", "This is not what I ordered"),
                 "neutral": ("Wrong item in order {order}",)},
                ("I received {a_product2} instead of the {product} I ordered.",
                 "The packing slip says {product}, but the box contains {a_product2}."),
                ("How do I send the wrong item back?", "Please send the {product} I actually ordered.")),
            _sc({"negative": ("Order sent to my old address",),
                 "neutral": ("Delivery address change for {order}", "Can I change my delivery address?")},
                ("I'm moving next week and need to change the delivery address for {order}.",
                 "The order hasn't shipped yet according to my account page."),
                ("Please update the address before it ships.", "Can you confirm the new address is on the order?")),
            _sc({"negative": ("Missing items in my delivery",),
                 "neutral": ("Only part of order {order} arrived",)},
                ("Only one of the {count} items in order {order} arrived.",
                 "There was no note saying the rest would follow."),
                ("Are the other items coming separately?", "Please send the missing items.")),
        ),
        "feelings": {
            "negative": ("I needed this for a birthday that has now passed.",
                         "At this point I just want my money back.",
                         "It's incredibly frustrating to get a different answer every time I ask.",
                         "This is the third delivery problem in a row.",
                         "THIS IS UNACCEPTABLE."),
            "positive": ("It turned up two days early and was packed beautifully.",
                         "The {carrier} driver even called ahead — great experience.",
                         "Everything was wrapped so carefully, not a scratch.",
                         "Thanks for sorting it out so quickly."),
            "sarcastic": ("Apparently my {product} is on a scenic tour of the country. Hope it's having fun.",
                          "Oh great, another 'delivery exception'. Truly the highlight of my week.",
                          "Delivered to my door, says {carrier}. Must be an invisible door."),
            "mixed": ("The {product} itself is lovely, but getting it here was a saga.",
                      "Great product, but the packaging was falling apart when it arrived."),
        },
    },
    "bug": {
        "scenarios": (
            _sc({"negative": ("App crashes at checkout", "Can't pay in the app", "Your app is unusable"),
                 "neutral": ("Bug report: checkout on {app}",),
                 "positive": ("Checkout bug fixed — thanks",)},
                ("Since the latest update, {app} crashes as soon as I tap 'Pay'.",
                 "I get {error} every time I try to check out on my {device}.",
                 "I've tried reinstalling, clearing the cache and logging out and back in."),
                ("Is there a workaround until it's fixed?", "Can someone from the tech team look at this?")),
            _sc({"negative": ("Cart keeps emptying itself",),
                 "neutral": ("Items disappearing from my cart",)},
                ("When I add {a_product} to the cart and go to checkout, the cart is empty.",
                 "It happens on my {device} but not on my partner's phone."),
                ("Happy to send screenshots if that helps.", "Please let me know when this is resolved.")),
            _sc({"negative": ("Notifications are useless",),
                 "neutral": ("Notification settings not saving", "Late push notifications")},
                ("Push notifications arrive hours after the order status changes.",
                 "I turn off marketing notifications and they turn themselves back on."),
                ("Could you look into it?", "Is this a known issue?")),
            _sc({"negative": ("Can't enter my address!",),
                 "neutral": ("Address field won't accept my apartment number",)},
                ("The address field won't accept apartment numbers with a slash, like 4/12.",
                 "I get 'invalid address' on {app} no matter how I write it."),
                ("How do I get my real address on the order?", "Can you add the address to my account manually?")),
            _sc({"negative": ("{app} won't even open",),
                 "neutral": ("Crash report: {app}",),
                 "positive": ("Crash fixed in the new version",)},
                ("{app} crashes on start-up on my {device}.",
                 "The crash log is at C:\\Users\\me\\AppData\\Local\\Larkspur\\crash.log if you want it.",
                 "This started after the update on {date}."),
                ("Where should I send the log file?", "Is there an older version I can install meanwhile?")),
        ),
        "feelings": {
            "negative": ("I've lost about an hour to this already.",
                         "It's hard to trust the app with my card details when it behaves like this.",
                         "I'm honestly about to give up and shop somewhere else."),
            "positive": ("The new version fixed it — thanks for the quick turnaround!",
                         "Really appreciate the team jumping on this so fast."),
            "sarcastic": ("Nothing says 'seamless shopping experience' like a spinning wheel for ten minutes.",
                          "Love the new feature where the app closes itself whenever I try to give you money."),
            "mixed": ("I really like the redesign, but it's been buggy since day one.",
                      "The app looks great now, shame it doesn't actually work on my {device}."),
        },
    },
    "praise": {
        "scenarios": (
            _sc({"positive": ("Love my new {product}", "Thank you!", "So happy with my order")},
                ("I got my {product} yesterday.", "I ordered {a_product} as a gift for my mum.",
                 "It was the first time I'd ordered furniture online."),
                ("No need to reply — just wanted you to know.",)),
            _sc({"positive": ("Great service from {agent}", "Kudos to your support team")},
                ("{agent} helped me on chat on {date}.",
                 "I had a problem with order {order} and {agent} sorted it out in minutes."),
                ("Please pass my thanks on to {agent}.",)),
            _sc({"positive": ("Just wanted to say thanks", "Best online shopping experience")},
                ("I've been a Larkspur Plus member for {years} years.",
                 "Every order has arrived on time and well packed."),
                ("No need to reply — just wanted you to know.",)),
        ),
        "feelings": {
            "positive": ("It's even nicer in person than in the photos.",
                         "{agent} went above and beyond to help me.", "You've got a customer for life.",
                         "I've already recommended you to three friends.",
                         "It's rare to get service this good these days."),
            "negative": ("The only thing I'd change is the amount of plastic in the packaging.",),
            "mixed": ("The {product} is gorgeous — I just wish it had come in less plastic.",
                      "Lovely quality, even if the delivery took a little longer than promised."),
        },
    },
    "cancellation": {
        "scenarios": (
            _sc({"negative": ("Cancelling Larkspur Plus", "Cancel my subscription"),
                 "neutral": ("Cancellation request", "Membership cancellation"),
                 "positive": ("Cancelling — but thank you",)},
                ("I'd like to cancel my {plan} effective immediately.",
                 "My membership renews on {date} and I don't want to be charged again."),
                ("Please confirm the cancellation in writing.",
                 "Can I get a prorated refund for the rest of the month?")),
            _sc({"negative": ("Please close my account", "I'm done"),
                 "neutral": ("Close my account",)},
                ("Please close my account and delete my saved payment details.",
                 "I don't want to receive any more marketing emails either."),
                ("Please confirm once my data is deleted.",)),
            _sc({"negative": ("How do I cancel?!", "Cancel button doesn't work"),
                 "neutral": ("How do I cancel?",)},
                ("I tried to cancel in the app but the button just reloads the page.",
                 "The help centre article links to a page that doesn't exist."),
                ("Please cancel it for me and confirm by email.", "Make sure I'm not charged again.")),
        ),
        "feelings": {
            "negative": ("After the last few orders, it's just not worth it anymore.",
                         "The prices keep going up and the service keeps going down.",
                         "I've found a competitor that actually delivers on time."),
            "positive": ("Nothing wrong with the service — I'm just moving abroad.",
                         "Thanks for a great couple of years, I'll be back if I return."),
            "mixed": ("I've loved being a member, but money is tight right now.",
                      "The products are great; the delivery delays are what's pushing me out."),
            "sarcastic": ("Making cancellation this hard is a bold retention strategy. It's not working.",),
        },
    },
    "feature_request": {
        "scenarios": (
            _sc({"neutral": ("Feature request: {feature}", "Suggestion for the app", "Any plans for {feature}?"),
                 "positive": ("Small suggestion (love the app!)", "Idea to make a great app even better"),
                 "negative": ("Still no {feature}?",)},
                ("It would be great if the app had {feature}.",
                 "I order the same things most months, so {feature} would save me a lot of time.",
                 "Other shops I use already offer {feature}.",
                 "I'm using {app} on my {device}, in case that matters."),
                ("Is this on the roadmap?", "Any chance this could be added?", "Would love to beta test it.")),
        ),
        "feelings": {
            "positive": ("Otherwise I love the app — this would make it perfect.", "Keep up the good work!"),
            "negative": ("Honestly it's surprising this still isn't possible in {year}.",
                         "I've asked for this before and nothing has changed."),
            "mixed": ("The app is fine overall, but it feels a bit behind other shops.",),
            "sarcastic": ("I'm sure it's on the roadmap right next to 'working search'.",),
        },
    },
    "returns": {
        "scenarios": (
            _sc({"negative": ("Still no refund for my return",),
                 "neutral": ("Refund for returned item?",),
                 "positive": ("Return refund received — thanks",)},
                ("I returned the {product} on {date} and {carrier} shows it was delivered to your warehouse.",
                 "It's been {days} days since you received my return and I haven't been refunded."),
                ("When will I get my refund?", "Can you check with the warehouse?")),
            _sc({"negative": ("Return label not working",),
                 "neutral": ("Return label for order {order}",)},
                ("The return label QR code won't scan at the drop-off point.",
                 "The drop-off point said the label was for a different carrier."),
                ("Please send a new return label.", "Can you arrange a pickup instead?")),
            _sc({"neutral": ("Exchange {product} for a different colour", "Return policy question"),
                 "positive": ("Easy exchange, thank you",)},
                ("The {product} is the wrong colour for our room — I'd like to exchange it.",
                 "It's still unused and in its original box."),
                ("How do I start an exchange?", "Can I return it by post instead?")),
        ),
        "feelings": {
            "negative": ("The return process is far more complicated than it should be.",
                         "I was told refunds take 5 days; it's been weeks."),
            "positive": ("The return was painless, thank you.", "Refund arrived already — impressive."),
            "sarcastic": ("Can't wait to spend another afternoon at the post office for this.",),
            "mixed": ("The exchange was easy, but the refund for the shipping still hasn't come through.",),
        },
    },
    "account": {
        "scenarios": (
            _sc({"negative": ("Can't reset my password", "Locked out AGAIN", "Account locked"),
                 "neutral": ("Password reset email not arriving",),
                 "positive": ("Thanks for unlocking my account",)},
                ("The password reset email never arrives, even in my spam folder.",
                 "My account was locked after I mistyped the password twice."),
                ("Can you unlock it please?", "What do you need from me to verify my identity?")),
            _sc({"neutral": ("Change email address on my account", "Update phone number")},
                ("I'd like to change the email on my account to my work address.",
                 "I no longer have access to the old address."),
                ("Please confirm once it's done.",)),
            _sc({"neutral": ("Two accounts — can you merge them?",)},
                ("I seem to have two accounts, one under each of my email addresses.",
                 "My order history is split between them."),
                ("Can you merge them into one?",)),
            _sc({"neutral": ("Delete my data (GDPR request)", "Data access request")},
                ("I'd like a copy of all the personal data you hold about me.",
                 "Please also tell me who you've shared it with."),
                ("Please confirm receipt of this request.",)),
        ),
        "feelings": {
            "negative": ("Being locked out of my own account with an order in progress is stressful.",
                         "I've tried five times now and I'm fed up."),
            "positive": ("{agent} sorted it out in two minutes, brilliant.",),
            "sarcastic": ("Love how secure my account is. Even I can't get in.",),
            "mixed": ("The security is reassuring, but the reset flow is a nightmare.",),
        },
    },
}

#: Neutral remarks stand in for feelings in a neutral email.
NEUTRAL_REMARKS = ("Not urgent, but I'd appreciate an answer.", "Just want to make sure it's on your radar.",
                   "My account email is the one I'm writing from.", "I'm usually free after 5pm if a call is easier.",
                   "I can send photos or screenshots if needed.")

#: Requests that close a positive email about a problem that was solved.
RESOLVED_ASKS = ("No further action needed — feel free to close the ticket.", "All good now, thanks!",
                 "Nothing else needed from my side.")

#: Background paragraphs of long emails, by mood.
TIMELINES = {
    "problem": ("I first contacted you about this on {date}.",
                "I was told someone would get back to me within 48 hours. Nobody did.",
                "I followed up on chat and {agent} said it had been escalated.",
                "Then I got an automated email saying the case was closed as resolved — it wasn't.",
                "I called the phone line, waited 40 minutes on hold, and was disconnected.",
                "Yesterday I got a survey asking how satisfied I was with the resolution.",
                "I also checked with my bank and my card provider, who were no help either."),
    "good": ("I first got in touch on {date}.", "{agent} replied within the hour.",
             "They kept me updated every step of the way without me having to chase.",
             "By the next morning everything was sorted.",
             "They even followed up a few days later to make sure all was well."),
    "background": ("For context, I've been ordering from you for about {years} years.",
                   "I'm a Larkspur Plus member and usually order a couple of times a month.",
                   "I mostly shop on {app}, using my {device}.",
                   "I checked the help centre first but couldn't find an answer.",
                   "I'm writing from the email address on my account."),
}

# --------------------------------------------------------------------------
# Whole emails in other languages: (mood, subject, text)
# --------------------------------------------------------------------------

FOREIGN_EMAILS: Dict[str, Tuple[Tuple[str, str, str], ...]] = {
    "es": (
        ("negative", "Pedido {order} sin llegar",
         "Hola:\n\nHice el pedido {order} hace {days} días y todavía no ha llegado. El seguimiento no se "
         "actualiza desde el lunes. ¿Me pueden decir qué está pasando?\n\nGracias,\n{name}"),
        ("positive", "¡Muy contenta con la compra!",
         "¡Hola! Acabo de recibir mi pedido y es precioso, mejor que en las fotos. El envío fue rapidísimo. "
         "¡Mil gracias! 😊"),
        ("negative", "Cobro duplicado",
         "Buenas tardes. Me han cobrado dos veces {amount} por el pedido {order}. Necesito que me devuelvan uno "
         "de los cargos lo antes posible. Es la segunda vez que me pasa y empiezo a perder la paciencia."),
        ("mixed", "Cancelar suscripción",
         "Quiero cancelar mi suscripción a Larkspur Plus. El servicio está bien, pero ya no lo uso lo "
         "suficiente. Gracias por todo."),
        ("sarcastic", "La app no funciona",
         "La aplicación se cierra cada vez que intento pagar. Qué maravilla, justo cuando quería comprar algo. 🙄"),
        ("neutral", "Pregunta sobre devoluciones",
         "Hola, ¿cuántos días tengo para devolver un artículo? Lo compré el mes pasado y aún está en su caja. "
         "Un saludo."),
    ),
    "de": (
        ("negative", "Bestellung {order} beschädigt angekommen",
         "Guten Tag,\n\nmeine Bestellung {order} ist heute angekommen, aber der Inhalt war leider zerbrochen. "
         "Die Verpackung war völlig unzureichend. Ich bitte um Ersatz oder Erstattung.\n\n"
         "Mit freundlichen Grüßen\n{name}"),
        ("positive", "Danke für den tollen Service",
         "Hallo Team, ich wollte mich nur kurz bedanken: {agent} hat mein Problem in wenigen Minuten gelöst. "
         "Super Service, weiter so!"),
        ("neutral", "Frage zur Rechnung",
         "Hallo, auf meiner Rechnung für {order} steht ein Betrag von {amount}, den ich nicht zuordnen kann. "
         "Könnten Sie mir das bitte erklären? Danke."),
        ("negative", "Kündigung",
         "Hiermit kündige ich mein Abonnement zum nächstmöglichen Zeitpunkt. Drei verspätete Lieferungen in "
         "Folge sind einfach nicht akzeptabel."),
        ("mixed", "Funktionswunsch",
         "Die App gefällt mir grundsätzlich gut, aber dass es immer noch keinen Dunkelmodus gibt, nervt "
         "ehrlich gesagt. Ansonsten alles prima."),
        ("sarcastic", "Lieferung",
         "Na toll. \"Express-Versand\" und nach {days} Tagen immer noch nichts. Wirklich beeindruckend."),
    ),
    "ja": (
        ("neutral", "注文 {order} がまだ届きません",
         "お世話になっております。{days}日前に注文した{order}がまだ届いていません。追跡情報も更新されていない"
         "ようです。確認していただけますでしょうか。よろしくお願いいたします。"),
        ("positive", "素晴らしい対応ありがとうございました",
         "先日はサポートの{agent}さんに丁寧に対応していただき、本当に助かりました。商品もとても気に入っています。"
         "ありがとうございました！"),
        ("negative", "二重請求について",
         "今月、{amount}が二回請求されています。至急返金をお願いします。正直、とても困っています。"),
        ("negative", "アプリの不具合",
         "アプリを更新してからログインできなくなりました。何度試しても「エラーが発生しました」と表示されます。"
         "早く直してください。"),
        ("mixed", "商品は良いが配送が遅い",
         "商品自体はとても良いのですが、配送に二週間もかかったのは残念でした。"),
    ),
}


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
