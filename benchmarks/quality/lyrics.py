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
