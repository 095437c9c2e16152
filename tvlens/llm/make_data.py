"""The source of the shipped natural-language ICL tasks (``tvlens/llm/data/*.json``).

Hand-written pairs (antonyms, capitals, French, past tense, plurals) live here as plain
lists; rule-based tasks (uppercase, letters, next number, POS selection, bitwise operations,
Null) are generated with a fixed seed. ``python -m tvlens.llm.make_data`` rewrites the JSON
files; a test checks that the shipped files equal what this module builds.

POS selection (after Han et al.): every input is a 7-word "sentence" holding one word of each
of six tags (noun NN, past-tense verb VBD, adjective JJ, adverb RB, preposition IN, personal
pronoun PRP) plus one extra word of a random tag, in random order. The task ``pos_first_X`` asks
for the first word tagged X. All six POS tasks share the same inputs, so only the
demonstrations tell them apart. Words were chosen to have one dominant tag.

Bitwise (after Han et al.): inputs are two 5-bit strings ``"01101 11000"``; the six tasks
(AND, NAND, OR, NOR, XOR, XNOR) share the same inputs and output the 5-bit result.

Null (the extra class Han et al. add to their task set; its exact construction is not
public, so tvlens defines one): prompts whose labels follow no rule, in the same format as
the POS and bitwise tasks. It holds every POS input, each labelled with a word of the
sentence chosen uniformly at random (ignoring tags), and every bitwise input, each labelled
with a uniformly random 5-bit string. No function of the input predicts a label, yet input
and label formats match the real tasks, so only the input-label *relation* tells Null apart.
Restricted to one family's inputs (:func:`tvlens.llm.tasks.restrict_inputs`) it joins that
family's task set in the decodability analysis; its ICL accuracy should stay near chance.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
SEED = 20240611
SCHEMA_VERSION = 1

ANTONYM = """hot cold|big small|tall short|fast slow|happy sad|dark light|up down|open closed|
early late|hard soft|rich poor|old young|strong weak|thick thin|wet dry|full empty|clean dirty|
high low|loud quiet|heavy light|good bad|love hate|win lose|true false|alive dead|
inside outside|begin end|push pull|buy sell|give take|accept reject|above below|before after|
front back|left right|north south|east west|day night|black white|male female|first last|
always never|increase decrease|include exclude|maximum minimum|major minor|positive negative|
ancient modern|brave cowardly|cheap expensive|wide narrow|deep shallow|sharp dull|smooth rough|
sweet sour|safe dangerous|polite rude|generous selfish|friend enemy|question answer|
victory defeat|entrance exit|import export|visible invisible|possible impossible|legal illegal|
private public|remember forget|asleep awake|present absent|top bottom|husband wife|come go|
laugh cry|ascend descend|attack defend|borrow lend|near far|long short|guilty innocent|
simple complex|tight loose|fresh stale|sink float|add subtract|multiply divide|
success failure|arrive depart|minimum maximum|lower raise"""

COUNTRY_CAPITAL = """France:Paris|Germany:Berlin|Italy:Rome|Spain:Madrid|Portugal:Lisbon|
Japan:Tokyo|China:Beijing|India:New Delhi|Russia:Moscow|Canada:Ottawa|Australia:Canberra|
Brazil:Brasília|Argentina:Buenos Aires|Mexico:Mexico City|Egypt:Cairo|Kenya:Nairobi|
Nigeria:Abuja|Turkey:Ankara|Greece:Athens|Norway:Oslo|Sweden:Stockholm|Finland:Helsinki|
Denmark:Copenhagen|Poland:Warsaw|Austria:Vienna|Hungary:Budapest|Ireland:Dublin|
Belgium:Brussels|Switzerland:Bern|Czech Republic:Prague|Thailand:Bangkok|Vietnam:Hanoi|
South Korea:Seoul|North Korea:Pyongyang|Philippines:Manila|Malaysia:Kuala Lumpur|
Pakistan:Islamabad|Bangladesh:Dhaka|Iran:Tehran|Iraq:Baghdad|Saudi Arabia:Riyadh|
Afghanistan:Kabul|Peru:Lima|Chile:Santiago|Colombia:Bogotá|Venezuela:Caracas|Cuba:Havana|
Ecuador:Quito|Uruguay:Montevideo|Paraguay:Asunción|Morocco:Rabat|Algeria:Algiers|
Tunisia:Tunis|Ethiopia:Addis Ababa|Ghana:Accra|Senegal:Dakar|Uganda:Kampala|Zimbabwe:Harare|
Ukraine:Kyiv|Romania:Bucharest|Bulgaria:Sofia|Serbia:Belgrade|Croatia:Zagreb|
Slovakia:Bratislava|Slovenia:Ljubljana|Iceland:Reykjavik|Estonia:Tallinn|Latvia:Riga|
Lithuania:Vilnius|New Zealand:Wellington|Nepal:Kathmandu|Mongolia:Ulaanbaatar|
Kazakhstan:Astana|Syria:Damascus|Jordan:Amman|Lebanon:Beirut|Qatar:Doha|
United Kingdom:London|Jamaica:Kingston|Costa Rica:San José|Libya:Tripoli|Sudan:Khartoum|
Belarus:Minsk|Armenia:Yerevan|Azerbaijan:Baku|Cyprus:Nicosia|Malta:Valletta|
Netherlands:Amsterdam|Cambodia:Phnom Penh|Laos:Vientiane|Oman:Muscat|Angola:Luanda"""

ENGLISH_FRENCH = """dog chien|cat chat|house maison|water eau|bread pain|apple pomme|book livre|
car voiture|tree arbre|sun soleil|moon lune|star étoile|sea mer|city ville|friend ami|
school école|window fenêtre|door porte|chair chaise|milk lait|cheese fromage|wine vin|
red rouge|blue bleu|green vert|white blanc|black noir|small petit|good bon|old vieux|day jour|
night nuit|week semaine|morning matin|evening soir|hand main|head tête|eye œil|heart cœur|
mouth bouche|father père|mother mère|brother frère|sister sœur|son fils|boy garçon|man homme|
woman femme|king roi|queen reine|bird oiseau|horse cheval|fish poisson|flower fleur|
garden jardin|kitchen cuisine|world monde|country pays|work travail|song chanson|love amour|
mountain montagne|snow neige|rain pluie|wind vent|fire feu|sky ciel|butter beurre|sugar sucre|
salt sel|egg œuf|meat viande|chicken poulet|hello bonjour|yes oui|two deux|three trois|
four quatre|five cinq|cheap bon marché|always toujours|never jamais|today aujourd'hui|
cow vache|pig cochon|mouse souris|table table|key clé|bed lit"""

PRESENT_PAST = """go went|eat ate|run ran|see saw|take took|give gave|write wrote|speak spoke|
drink drank|swim swam|sing sang|begin began|break broke|bring brought|buy bought|catch caught|
choose chose|come came|do did|draw drew|drive drove|fall fell|feel felt|fight fought|
find found|fly flew|forget forgot|grow grew|have had|hear heard|hold held|keep kept|know knew|
leave left|lose lost|make made|meet met|pay paid|ride rode|ring rang|rise rose|say said|
sell sold|send sent|shake shook|sit sat|sleep slept|steal stole|stand stood|teach taught|
tell told|think thought|throw threw|understand understood|wear wore|win won|walk walked|
jump jumped|play played|cook cooked|dance danced|laugh laughed|open opened|ask asked|
help helped|cry cried|stop stopped|plan planned|try tried|carry carried|build built|
spend spent|lend lent"""

SINGULAR_PLURAL = """cat cats|dog dogs|box boxes|child children|man men|woman women|mouse mice|
foot feet|tooth teeth|goose geese|person people|city cities|baby babies|knife knives|
leaf leaves|wolf wolves|wife wives|life lives|potato potatoes|tomato tomatoes|hero heroes|
bus buses|church churches|dish dishes|watch watches|glass glasses|class classes|ox oxen|
crisis crises|analysis analyses|phenomenon phenomena|criterion criteria|day days|key keys|
boy boys|toy toys|house houses|car cars|book books|tree trees|apple apples|bird birds|
chair chairs|table tables|window windows|door doors|pen pens|cup cups|girl girls|horse horses|
river rivers|star stars|flower flowers|shoe shoes|hat hats|story stories|party parties|
lady ladies|country countries|half halves|shelf shelves|thief thieves|loaf loaves|
calf calves|roof roofs|chief chiefs|wish wishes|fox foxes|brush brushes|kiss kisses|
sheep sheep|deer deer"""

#: a general vocabulary for the spelling tasks (uppercase, first and last letter)
WORDS = """apple river teacher pencil mountain doctor horse banana kitchen castle elephant village
dragon guitar library ocean tiger blanket island rabbit candle forest bicycle carpet lemon violin
wizard happy brave gentle clever shiny noisy fragile eager lazy polite curious famous narrow
sleepy garden window flower silver winter summer orange purple yellow planet rocket market
engine pocket basket ladder mirror pillow rubber button cotton copper marble finger shadow
thunder desert valley harbor jungle meadow dolphin penguin giraffe monkey parrot salmon turtle
zebra camera"""

POS_WORDS: dict[str, str] = {
    "noun": """apple river teacher pencil mountain doctor horse banana kitchen castle elephant
village dragon guitar library ocean tiger blanket island rabbit candle forest bicycle carpet
lemon violin wizard""",
    "verb": """ate ran sang wrote swam drank threw built bought spoke chose flew drove stole
grew forgot taught caught fought broke""",
    "adjective": """happy tall brave tiny huge ancient gentle clever shiny noisy fragile eager
lazy polite furious hungry curious famous narrow sleepy""",
    "adverb": """quickly slowly softly rarely gladly loudly quietly calmly eagerly happily
suddenly gently bravely neatly swiftly politely silently boldly wisely""",
    "preposition": """under above beside during without through between among toward beneath
onto upon against despite into amid""",
    "pronoun": """she he they we you it them him us me""",
}
POS_TAGS = {
    "noun": "NN",
    "verb": "VBD",
    "adjective": "JJ",
    "adverb": "RB",
    "preposition": "IN",
    "pronoun": "PRP",
}
BITWISE_OPS = {
    "and": lambda a, b: a & b,
    "nand": lambda a, b: 1 - (a & b),
    "or": lambda a, b: a | b,
    "nor": lambda a, b: 1 - (a | b),
    "xor": lambda a, b: a ^ b,
    "xnor": lambda a, b: 1 - (a ^ b),
}
N_GENERATED = 100


def _pairs(text: str, sep: str = " ") -> list[list[str]]:
    out = []
    for item in text.replace("\n", "").split("|"):
        x, y = item.split(sep, 1) if sep != " " else item.strip().split(" ", 1)
        out.append([x.strip(), y.strip()])
    return out


def _task(name: str, family: str, description: str, pairs: list[list[str]]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "family": family,
        "description": description,
        "pairs": [{"input": x, "output": y} for x, y in pairs],
    }


def _pos_sentences(rng: random.Random, n: int) -> list[list[tuple[str, str]]]:
    words = {tag: text.split() for tag, text in POS_WORDS.items()}
    seen: set[str] = set()
    sentences = []
    while len(sentences) < n:
        tags = list(words) + [rng.choice(list(words))]
        rng.shuffle(tags)
        chosen: list[tuple[str, str]] = []
        for tag in tags:
            w = rng.choice([w for w in words[tag] if w not in {c for c, _ in chosen}])
            chosen.append((w, tag))
        text = " ".join(w for w, _ in chosen)
        if text not in seen:
            seen.add(text)
            sentences.append(chosen)
    return sentences


def _bit_pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    out = []
    while len(out) < n:
        a = "".join(rng.choice("01") for _ in range(5))
        b = "".join(rng.choice("01") for _ in range(5))
        if (a, b) not in seen:
            seen.add((a, b))
            out.append((a, b))
    return out


def build_tasks() -> dict[str, dict]:
    """Every shipped task as a JSON-ready dict, keyed by task name (deterministic)."""
    rng = random.Random(SEED)
    tasks = {
        "antonym": _task("antonym", "word", "a word -> its antonym", _pairs(ANTONYM)),
        "country_capital": _task(
            "country_capital", "word", "a country -> its capital", _pairs(COUNTRY_CAPITAL, ":")
        ),
        "english_french": _task(
            "english_french",
            "word",
            "an English word -> its French translation",
            _pairs(ENGLISH_FRENCH),
        ),
        "present_past": _task(
            "present_past", "word", "a verb -> its simple past tense", _pairs(PRESENT_PAST)
        ),
        "singular_plural": _task(
            "singular_plural", "word", "a noun -> its plural", _pairs(SINGULAR_PLURAL)
        ),
    }
    words = WORDS.split()
    tasks["uppercase"] = _task(
        "uppercase", "word", "a word -> the word in capitals", [[w, w.upper()] for w in words]
    )
    tasks["first_letter"] = _task(
        "first_letter", "word", "a word -> its first letter", [[w, w[0]] for w in words]
    )
    tasks["last_letter"] = _task(
        "last_letter", "word", "a word -> its last letter", [[w, w[-1]] for w in words]
    )
    tasks["next_number"] = _task(
        "next_number",
        "word",
        "an integer -> the next integer",
        [[str(i), str(i + 1)] for i in range(N_GENERATED)],
    )
    sentences = _pos_sentences(rng, N_GENERATED)
    for tag, ptb in POS_TAGS.items():
        pairs = [[" ".join(w for w, _ in s), next(w for w, t in s if t == tag)] for s in sentences]
        tasks[f"pos_first_{tag}"] = _task(
            f"pos_first_{tag}", "pos", f"a 7-word sentence -> its first {tag} ({ptb})", pairs
        )
    bits = _bit_pairs(rng, N_GENERATED)
    for op, fn in BITWISE_OPS.items():
        pairs = [
            [f"{a} {b}", "".join(str(fn(int(x), int(y))) for x, y in zip(a, b, strict=True))]
            for a, b in bits
        ]
        tasks[f"bitwise_{op}"] = _task(
            f"bitwise_{op}", "bitwise", f"two 5-bit strings -> their bitwise {op.upper()}", pairs
        )
    null_pairs = [[" ".join(w for w, _ in sent), rng.choice(sent)[0]] for sent in sentences]
    null_pairs += [[f"{a} {b}", "".join(rng.choice("01") for _ in range(5))] for a, b in bits]
    tasks["null"] = _task(
        "null",
        "null",
        "no rule: every POS input labelled with a random word of its sentence and every "
        "bitwise input with a random 5-bit string",
        null_pairs,
    )
    tasks.update(build_novel_tasks())
    return tasks


#: seed of the in-context-only tasks (their own generator: the other files never change)
NOVEL_SEED = 20261207


def _derangement(rng: random.Random, items: list[str]) -> list[str]:
    """A random permutation of ``items`` that moves every item."""
    while True:
        out = items[:]
        rng.shuffle(out)
        if all(a != b for a, b in zip(items, out, strict=True)):
            return out


def build_novel_tasks(seed: int = NOVEL_SEED) -> dict[str, dict]:
    """The in-context-only tasks (family ``novel``): mappings no pretrained model can know
    before the prompt, so it must infer them from the demonstrations. Each has a rule that
    the demonstrations reveal (a random per-item code would be unlearnable unless the query
    itself were among the demonstrations); drawn from ``seed``:

    * ``novel_antonym_upper``: two known tasks composed, the antonym in capitals;
    * ``novel_first_upper``: two known tasks composed, the first letter in capitals;
    * ``novel_pos_colour``: a known classification (noun, verb, adjective) relabelled with
      colour words in a random order;
    * ``novel_number_plus``: an integer -> the integer plus a random offset;
    * ``novel_word_swap``: a random derangement of a word list (apple -> marble), the control
      that has no rule: it can only be looked up, so it is not learnt in context.
    """
    rng = random.Random(seed)
    words = WORDS.split()
    tasks = {}

    def add(name: str, description: str, pairs: list[list[str]]) -> None:
        tasks[name] = _task(name, "novel", f"in-context only (seed {seed}): {description}", pairs)

    add("novel_antonym_upper", "a word -> its antonym in capitals (two known tasks composed)",
        [[x, y.upper()] for x, y in _pairs(ANTONYM)])  # fmt: skip
    add("novel_first_upper", "a word -> its first letter in capitals (two known tasks composed)",
        [[w, w[0].upper()] for w in words])  # fmt: skip
    colours = ["blue", "green", "red"]
    rng.shuffle(colours)
    label = dict(zip(("noun", "verb", "adjective"), colours, strict=True))
    by_class = {
        "noun": [x for x, _ in _pairs(SINGULAR_PLURAL)],
        "verb": [x for x, _ in _pairs(PRESENT_PAST)],
        "adjective": [x for x, _ in _pairs(ANTONYM)],
    }
    seen: set[str] = set()
    pos_pairs = []
    for i in range(max(map(len, by_class.values()))):  # interleaved, each input once
        for cls, xs in by_class.items():
            if i < len(xs) and xs[i] not in seen:
                seen.add(xs[i])
                pos_pairs.append([xs[i], label[cls]])
    add("novel_pos_colour",
        f"a word -> a colour naming its part of speech (noun {label['noun']}, verb "
        f"{label['verb']}, adjective {label['adjective']})", pos_pairs)  # fmt: skip
    offset = rng.randint(3, 9)
    add("novel_number_plus", f"an integer -> the integer plus {offset}",
        [[str(i), str(i + offset)] for i in range(N_GENERATED - offset)])  # fmt: skip
    add("novel_word_swap", "a word -> another word of the list, a random derangement (no rule)",
        [[w, v] for w, v in zip(words, _derangement(rng, words), strict=True)])  # fmt: skip
    return tasks


def write_tasks(directory: Path = DATA_DIR) -> list[Path]:
    """Write every task to ``directory/<name>.json``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, task in build_tasks().items():
        path = directory / f"{name}.json"
        path.write_text(json.dumps(task, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_tasks():
        print(p)
