"""Lyric texts for synthesised collections.

``PUBLIC_DOMAIN`` holds traditional rhymes and verse by authors who died before 1900 (free to
redistribute); ``generated_song`` writes new nonsense-free lyrics from a small grammar for
collections larger than that list.
"""

from __future__ import annotations

import random

PUBLIC_DOMAIN: dict[str, list[str]] = {
    "twinkle": ["Twinkle, twinkle, little star,", "How I wonder what you are!",
                "Up above the world so high,", "Like a diamond in the sky.",
                "When the blazing sun is gone,", "When he nothing shines upon,"],
    "lamb": ["Mary had a little lamb,", "Its fleece was white as snow;", "And everywhere that Mary went",
             "The lamb was sure to go.", "It followed her to school one day,", "Which was against the rule."],
    "humpty": ["Humpty Dumpty sat on a wall,", "Humpty Dumpty had a great fall.",
               "All the king's horses and all the king's men", "Couldn't put Humpty together again."],
    "jack": ["Jack and Jill went up the hill", "To fetch a pail of water.", "Jack fell down and broke his crown,",
             "And Jill came tumbling after.", "Up Jack got, and home did trot,", "As fast as he could caper."],
    "diddle": ["Hey diddle diddle, the cat and the fiddle,", "The cow jumped over the moon.",
               "The little dog laughed to see such fun,", "And the dish ran away with the spoon."],
    "sheep": ["Baa, baa, black sheep, have you any wool?", "Yes sir, yes sir, three bags full.",
              "One for the master, and one for the dame,", "And one for the little boy who lives down the lane."],
    "boat": ["Row, row, row your boat,", "Gently down the stream.", "Merrily, merrily, merrily, merrily,",
             "Life is but a dream."],
    "bridge": ["London Bridge is falling down,", "Falling down, falling down.", "London Bridge is falling down,",
               "My fair lady.", "Build it up with wood and clay,", "Wood and clay, wood and clay."],
    "hubbard": ["Old Mother Hubbard went to the cupboard,", "To give the poor dog a bone;",
                "When she came there, the cupboard was bare,", "And so the poor dog had none."],
    "tyger": ["Tyger Tyger, burning bright,", "In the forests of the night;", "What immortal hand or eye,",
              "Could frame thy fearful symmetry?", "In what distant deeps or skies", "Burnt the fire of thine eyes?"],
    "sonnet": ["Shall I compare thee to a summer's day?", "Thou art more lovely and more temperate:",
               "Rough winds do shake the darling buds of May,", "And summer's lease hath all too short a date."],
    "hope": ["Hope is the thing with feathers", "That perches in the soul,", "And sings the tune without the words,",
             "And never stops at all,", "And sweetest in the gale is heard;", "And sore must be the storm."],
    "rose": ["O my love is like a red, red rose,", "That's newly sprung in June;", "O my love is like the melody",
             "That's sweetly played in tune.", "So fair art thou, my bonnie lass,", "So deep in love am I."],
    "daffodils": ["I wandered lonely as a cloud", "That floats on high over vales and hills,",
                  "When all at once I saw a crowd,", "A host, of golden daffodils;",
                  "Beside the lake, beneath the trees,", "Fluttering and dancing in the breeze."],
    "raven": ["Once upon a midnight dreary, while I pondered, weak and weary,",
              "Over many a quaint and curious volume of forgotten lore,",
              "While I nodded, nearly napping, suddenly there came a tapping,",
              "As of some one gently rapping, rapping at my chamber door."],
    "shadow": ["I have a little shadow that goes in and out with me,",
               "And what can be the use of him is more than I can see.",
               "He is very, very like me from the heels up to the head;",
               "And I see him jump before me, when I jump into my bed."],
    "owl": ["The Owl and the Pussy-cat went to sea", "In a beautiful pea-green boat,",
            "They took some honey, and plenty of money,", "Wrapped up in a five-pound note."],
    "eagle": ["He clasps the crag with crooked hands;", "Close to the sun in lonely lands,",
              "Ringed with the azure world, he stands.", "The wrinkled sea beneath him crawls;",
              "He watches from his mountain walls,", "And like a thunderbolt he falls."],
    "lamb-blake": ["Little Lamb who made thee?", "Dost thou know who made thee?", "Gave thee life and bid thee feed,",
                   "By the stream and over the mead;", "Gave thee clothing of delight,", "Softest clothing wooly bright."],
    "arrow": ["I shot an arrow into the air,", "It fell to earth, I knew not where;",
              "For, so swiftly it flew, the sight", "Could not follow it in its flight."],
    "sixpence": ["Sing a song of sixpence, a pocket full of rye.", "Four and twenty blackbirds, baked in a pie.",
                 "When the pie was opened, the birds began to sing;", "Was not that a dainty dish, to set before the king?"],
    "bopeep": ["Little Bo Peep has lost her sheep,", "And doesn't know where to find them;",
               "Leave them alone, and they'll come home,", "Wagging their tails behind them."],
    "clock": ["Hickory, dickory, dock.", "The mouse ran up the clock.", "The clock struck one,",
              "The mouse ran down,", "Hickory, dickory, dock."],
    "beauty": ["A thing of beauty is a joy for ever:", "Its loveliness increases; it will never",
               "Pass into nothingness; but still will keep", "A bower quiet for us, and a sleep",
               "Full of sweet dreams, and health, and quiet breathing."],
}

_SUBJECTS = ["the river", "my darling", "the lonely sailor", "a silver moon", "the old machine", "the city lights",
             "your shadow", "the northern wind", "a broken clock", "the summer rain", "the highway", "my brother",
             "the painted bird", "a paper crown", "the morning train", "the empty room", "an open door",
             "the golden field", "the winter sun", "a stranger's hand", "the ocean floor", "the burning candle"]
_VERBS = ["is calling", "keeps turning", "will carry", "remembers", "is waiting for", "runs away from",
          "sings about", "dreams of", "holds on to", "is dancing with", "whispers to", "falls into",
          "is looking for", "forgets", "will follow", "shines upon"]
_OBJECTS = ["the light", "a heart of stone", "the last goodbye", "my name", "the endless road", "the morning",
            "a quiet home", "the falling snow", "the distant hills", "a thousand stars", "the open sea",
            "the sound of bells", "the Sunday bread", "a faded photograph", "the engine smoke", "the dancing crowd"]
_TAILS = ["tonight", "again", "forever", "in the dark", "so far away", "all alone", "before the dawn",
          "when I am gone", "like yesterday", "one more time", "down by the water", "across the line"]


def generated_song(rng: random.Random, n_lines: int = 6) -> list[str]:
    """New lyrics: ``n_lines`` lines of 'subject verb object tail', with a repeated hook line."""
    lines = []
    hook = f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)},"
    for i in range(n_lines):
        if i % 3 == 2:
            lines.append(hook)
        else:
            lines.append(f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} "
                         f"{rng.choice(_OBJECTS)} {rng.choice(_TAILS)},")
    return lines


def change_words(rng: random.Random, lines: list[str], fraction: float) -> list[str]:
    """Replace about ``fraction`` of the words with words from the generator's vocabulary."""
    pool = " ".join(_SUBJECTS + _OBJECTS + _TAILS).split()
    out = []
    for line in lines:
        words = line.split()
        out.append(" ".join(rng.choice(pool) if rng.random() < fraction else w for w in words))
    return out


# ---------------------------------------------------------------- song-length lyrics (quality benchmark)
#
# A larger grammar for full songs: verses, a chorus built around a hook (repeated 2–4 times),
# optional pre-chorus and bridge; 12–24 lines. Each song draws a small "palette" from every word
# bank, so its lines share words with each other (as real lyrics do) while the whole collection
# shares a common pop vocabulary (love, night, heart, ...): text retrieval must match word
# combinations, not rare words.

NAMES = ["Mary", "Johnny", "Rosalie", "Caroline", "Billy", "Lucy", "Josephine", "Eddie", "Maggie", "Sally",
         "Jimmy", "Annabelle", "Louisa", "Tommy", "Delilah", "Frankie", "Juliet", "Ruby", "Jolene", "Virginia",
         "Marie", "Daniel", "Rosa", "Stella", "Henry", "Angela", "Charlie", "Suzanne", "Layla", "Martha",
         "Joseph", "Eleanor", "Roxanne", "Peggy", "Sam", "Molly", "Jack", "Diana", "Lola", "Vincent"]
ADDRESSES = ["my darling", "baby", "my love", "little sister", "brother", "my friend", "sweetheart", "honey",
             "old man", "pretty mama", "my dear", "child", "stranger", "captain", "lover", "mister"]
PLACES = ["Memphis", "the harbour", "the county line", "Baltimore", "the river bend", "Kingston town",
          "the railway station", "the edge of town", "New Orleans", "the northern sea", "the old hotel",
          "the parking lot", "the dance hall", "the coal mine", "the cotton fields", "the city square",
          "the border", "the motel", "the chapel", "the lighthouse", "Galveston", "the mountain pass",
          "the boulevard", "the back porch", "the prairie", "the dusty road", "Chicago", "the island",
          "the factory gate", "the valley", "the golden coast", "the old saloon", "Santa Fe", "the pier",
          "the cornfield", "the subway", "the canyon", "Savannah", "the ballroom", "the graveyard"]
ADJECTIVES = ["silver", "golden", "broken", "lonely", "faded", "crimson", "electric", "quiet", "wild",
              "bitter", "sweet", "empty", "burning", "frozen", "restless", "shining", "heavy", "hollow",
              "tender", "wicked", "holy", "midnight", "velvet", "rusty", "hungry", "painted", "gentle",
              "careless", "distant", "shattered", "endless", "secret", "blue", "crooked", "dusty", "cold",
              "bright", "ragged", "brave", "dark"]
NOUNS = ["heart", "river", "train", "moon", "highway", "window", "letter", "guitar", "candle", "mountain",
         "ocean", "shadow", "diamond", "rose", "bottle", "feather", "thunder", "engine", "mirror", "radio",
         "photograph", "ring", "bridge", "sparrow", "lantern", "wheel", "harbour light", "stone", "fire",
         "wire", "garden", "soldier", "preacher", "gambler", "sailor", "dancer", "drifter", "stranger",
         "horse", "crown", "anchor", "compass", "ribbon", "whistle", "cigarette", "coat", "key", "door",
         "clock", "telephone", "suitcase", "blanket", "hammer", "boat", "bell", "storm", "star", "flame",
         "song", "dream", "kiss", "prayer", "promise", "secret", "memory", "heartbeat", "ghost", "angel"]
ABSTRACTS = ["love", "time", "freedom", "sorrow", "glory", "mercy", "trouble", "desire", "money", "silence",
             "heaven", "danger", "forgiveness", "loneliness", "madness", "faith", "hope", "pride", "shame",
             "wonder", "patience", "fortune", "youth", "summer", "midnight", "morning", "rain", "snow"]
# (base, third person, past, gerund)
VERBS = [("hold", "holds", "held", "holding"), ("carry", "carries", "carried", "carrying"),
         ("follow", "follows", "followed", "following"), ("remember", "remembers", "remembered", "remembering"),
         ("forget", "forgets", "forgot", "forgetting"), ("chase", "chases", "chased", "chasing"),
         ("burn", "burns", "burned", "burning"), ("break", "breaks", "broke", "breaking"),
         ("find", "finds", "found", "finding"), ("lose", "loses", "lost", "losing"),
         ("call", "calls", "called", "calling"), ("keep", "keeps", "kept", "keeping"),
         ("steal", "steals", "stole", "stealing"), ("wait for", "waits for", "waited for", "waiting for"),
         ("dream of", "dreams of", "dreamed of", "dreaming of"), ("sing about", "sings about", "sang about", "singing about"),
         ("dance with", "dances with", "danced with", "dancing with"), ("run from", "runs from", "ran from", "running from"),
         ("pray for", "prays for", "prayed for", "praying for"), ("write", "writes", "wrote", "writing"),
         ("mend", "mends", "mended", "mending"), ("bury", "buries", "buried", "burying"),
         ("trust", "trusts", "trusted", "trusting"), ("need", "needs", "needed", "needing"),
         ("paint", "paints", "painted", "painting"), ("sell", "sells", "sold", "selling"),
         ("buy", "buys", "bought", "buying"), ("drive", "drives", "drove", "driving"),
         ("leave", "leaves", "left", "leaving"), ("kiss", "kisses", "kissed", "kissing"),
         ("hide", "hides", "hid", "hiding"), ("light", "lights", "lit", "lighting"),
         ("ride", "rides", "rode", "riding"), ("save", "saves", "saved", "saving"),
         ("touch", "touches", "touched", "touching"), ("watch", "watches", "watched", "watching"),
         ("miss", "misses", "missed", "missing"), ("throw away", "throws away", "threw away", "throwing away"),
         ("give back", "gives back", "gave back", "giving back"), ("cross", "crosses", "crossed", "crossing")]
# (base, third person, gerund) of verbs without an object
INTRANSITIVE = [("shine", "shines", "shining"), ("fall", "falls", "falling"), ("cry", "cries", "crying"),
                ("sing", "sings", "singing"), ("roll", "rolls", "rolling"), ("burn", "burns", "burning"),
                ("wander", "wanders", "wandering"), ("tremble", "trembles", "trembling"), ("fade", "fades", "fading"),
                ("howl", "howls", "howling"), ("rise", "rises", "rising"), ("shiver", "shivers", "shivering"),
                ("whisper", "whispers", "whispering"), ("sleep", "sleeps", "sleeping"), ("bleed", "bleeds", "bleeding"),
                ("glow", "glows", "glowing"), ("drift", "drifts", "drifting"), ("break", "breaks", "breaking"),
                ("turn", "turns", "turning"), ("wait", "waits", "waiting"), ("pray", "prays", "praying"),
                ("dance", "dances", "dancing"), ("run", "runs", "running"), ("fly", "flies", "flying")]
TIMES = ["tonight", "tomorrow", "in the morning", "at midnight", "every Sunday", "all summer long",
         "when the rain comes down", "till the break of day", "for a thousand years", "one more time",
         "before the sun goes down", "in the dead of night", "all over again", "when the bells ring",
         "after the war", "on a Friday night", "in the month of May", "forevermore", "until the end",
         "when the winter comes", "since we were young", "in the summertime", "by the light of dawn",
         "every single day", "when the lights go out", "right now", "someday", "long ago"]
QUESTIONS = ["where did you go", "can you hear me now", "who will remember me", "why did you leave",
             "what have we done", "how long must I wait", "will you come back home", "do you still believe",
             "is it too late", "who is gonna save me", "where do the rivers run", "what is love without you",
             "can we start again", "who turned out the lights", "why does it hurt so bad",
             "how did we get here", "are you listening", "where is the morning"]
INTERJECTIONS = ["oh", "yeah", "hey", "whoa", "ooh", "oh yeah", "oh no", "la la la", "hey hey", "ooh baby"]
PREPOSITIONS = ["in", "down by", "across", "behind", "beyond", "outside", "under", "along", "above", "near"]


def _palette(rng: random.Random) -> dict[str, list]:
    """A song's own small subset of every bank."""
    def pick(bank: list, k: int) -> list:
        return rng.sample(bank, min(k, len(bank)))
    return {"names": pick(NAMES, 2), "addresses": pick(ADDRESSES, 2), "places": pick(PLACES, 4),
            "adjectives": pick(ADJECTIVES, 8), "nouns": pick(NOUNS, 12), "abstracts": pick(ABSTRACTS, 5),
            "verbs": pick(VERBS, 9), "intransitive": pick(INTRANSITIVE, 6), "times": pick(TIMES, 6),
            "questions": pick(QUESTIONS, 3), "interjections": pick(INTERJECTIONS, 2),
            "prepositions": pick(PREPOSITIONS, 4)}


def _object(rng: random.Random, p: dict) -> str:
    form = rng.random()
    if form < 0.45:
        return f"the {rng.choice(p['adjectives'])} {rng.choice(p['nouns'])}"
    if form < 0.7:
        return f"the {rng.choice(p['nouns'])}"
    if form < 0.85:
        return rng.choice(p["abstracts"])
    return f"your {rng.choice(p['nouns'])}"


def _subject(rng: random.Random, p: dict) -> str:
    form = rng.random()
    if form < 0.5:
        return f"the {rng.choice(p['adjectives'])} {rng.choice(p['nouns'])}"
    if form < 0.75:
        return f"the {rng.choice(p['nouns'])}"
    return rng.choice(p["names"])


def _line(rng: random.Random, p: dict) -> str:
    v = rng.choice(p["verbs"])
    iv = rng.choice(p["intransitive"])
    templates = [
        lambda: f"{_subject(rng, p)} {v[1]} {_object(rng, p)} {rng.choice(p['times'])}",
        lambda: f"I {v[0]} {_object(rng, p)} {rng.choice(p['times'])}",
        lambda: f"you {v[2]} {_object(rng, p)} like the {rng.choice(p['nouns'])} {iv[1]}",
        lambda: f"{rng.choice(p['prepositions'])} {rng.choice(p['places'])} where the {rng.choice(p['nouns'])} {iv[1]}",
        lambda: f"{rng.choice(p['names'])}, {rng.choice(p['names'])}, don't you {v[0]} {_object(rng, p)}",
        lambda: f"we were {rng.choice(p['adjectives'])} and {rng.choice(p['adjectives'])} in {rng.choice(p['places'])}",
        lambda: f"every {rng.choice(p['nouns'])} I {v[2]} {rng.choice(p['times'])}",
        lambda: f"take me back to {rng.choice(p['places'])}, {rng.choice(p['addresses'])}",
        lambda: f"there's a {rng.choice(p['adjectives'])} {rng.choice(p['nouns'])} {rng.choice(p['prepositions'])} {rng.choice(p['places'])}",
        lambda: f"when the {rng.choice(p['nouns'])} {iv[1]} and the {rng.choice(p['nouns'])} {rng.choice(p['intransitive'])[1]}",
        lambda: f"I've been {v[3]} {_object(rng, p)} {rng.choice(p['times'])}",
        lambda: f"so {v[0]} {_object(rng, p)}, {rng.choice(p['addresses'])}",
        lambda: f"{rng.choice(p['interjections'])} {rng.choice(p['addresses'])}, {rng.choice(p['questions'])}",
        lambda: f"my {rng.choice(p['nouns'])} is {iv[2]} {rng.choice(p['prepositions'])} {rng.choice(p['places'])}",
        lambda: f"nobody {v[1]} {_object(rng, p)} the way you do",
        lambda: f"{rng.choice(p['abstracts'])} is a {rng.choice(p['adjectives'])} {rng.choice(p['nouns'])}",
        lambda: f"I {v[2]} {_object(rng, p)} and I {rng.choice(p['verbs'])[2]} {_object(rng, p)}",
        lambda: f"tell me {rng.choice(p['questions'])}",
    ]
    line = rng.choice(templates)()
    return line[0].upper() + line[1:]


def _hook(rng: random.Random, p: dict) -> str:
    """The title line the chorus is built around."""
    v = rng.choice(p["verbs"])
    iv = rng.choice(p["intransitive"])
    forms = [
        f"{rng.choice(p['adjectives'])} {rng.choice(p['nouns'])}, {rng.choice(p['adjectives'])} {rng.choice(p['nouns'])}",
        f"{v[0]} me {rng.choice(p['times'])}",
        f"{rng.choice(p['names'])}, {rng.choice(p['names'])}, {rng.choice(p['questions'])}",
        f"we'll {v[0]} {_object(rng, p)} {rng.choice(p['times'])}",
        f"{rng.choice(p['abstracts'])} in {rng.choice(p['places'])}",
        f"the {rng.choice(p['nouns'])} keeps {iv[2]}",
        f"{rng.choice(p['interjections'])}, {rng.choice(p['adjectives'])} {rng.choice(p['abstracts'])}",
        f"don't {v[0]} {_object(rng, p)}, {rng.choice(p['addresses'])}",
    ]
    hook = rng.choice(forms)
    return hook[0].upper() + hook[1:]


# Section plans; V verse, P pre-chorus, C chorus, B bridge (lines per section given by the song).
SONG_FORMS = [["V", "C", "V", "C"], ["V", "C", "V", "C", "B", "C"], ["V", "P", "C", "V", "P", "C"],
              ["C", "V", "C", "V", "C"], ["V", "V", "C", "V", "C"], ["V", "C", "V", "C", "C"]]


def generated_full_song(rng: random.Random, min_lines: int = 12, max_lines: int = 24) -> list[list[str]]:
    """A song as a list of sections (each a list of lines), between ``min_lines`` and ``max_lines``
    lines in all. The chorus section is the same text each time it comes back and holds the hook
    twice."""
    p = _palette(rng)
    for _ in range(100):
        form = rng.choice(SONG_FORMS)
        verse_len, chorus_len = rng.choice([3, 4, 4]), rng.choice([3, 4, 4])
        sizes = {"V": verse_len, "P": 2, "C": chorus_len, "B": 2}
        total = sum(sizes[s] for s in form)
        if min_lines <= total <= max_lines:
            break
    hook = _hook(rng, p)
    chorus = [hook] + [_line(rng, p) for _ in range(chorus_len - 2)] + [hook]
    pre = [_line(rng, p) for _ in range(2)]
    song = []
    for section in form:
        if section == "C":
            song.append(list(chorus))
        elif section == "P":
            song.append(list(pre))
        else:
            song.append([_line(rng, p) for _ in range(sizes[section])])
    return song


def vocabulary() -> list[str]:
    """Every word the grammar can produce (for changed-word versions)."""
    words = set()
    for bank in (NAMES, ADDRESSES, PLACES, ADJECTIVES, NOUNS, ABSTRACTS, TIMES, INTERJECTIONS):
        for phrase in bank:
            words.update(phrase.split())
    for forms in VERBS + INTRANSITIVE:
        for form in forms:
            words.update(form.split())
    return sorted(words)


def change_words_from(rng: random.Random, lines: list[str], fraction: float, pool: list[str]) -> list[str]:
    """Replace about ``fraction`` of the words of ``lines`` with words drawn from ``pool``."""
    out = []
    for line in lines:
        words = line.split()
        out.append(" ".join(rng.choice(pool) if rng.random() < fraction else w for w in words))
    return out
