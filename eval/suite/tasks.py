"""The suite's tasks and their wording in each language (prompts, needles, questions).

Data set names are ``<task>_<lang>``: ``needle_en``, ``multi_needle_de``, ``passkey_zh``,
``section_en``, ``summary_de`` and so on. Prompts follow LongBench's shape (instructions,
``{context}``, the question in ``{input}``); every task uses the chat template.
"""

from __future__ import annotations

TASKS = ("needle", "multi_needle", "passkey", "section", "summary")

#: Max new tokens per task (LongBench uses 32-128 for QA and 512 for summaries; summaries here
#: ask for one line per page, a few pages at the shorter lengths).
MAX_NEW_TOKENS = {"needle": 32, "multi_needle": 48, "passkey": 16, "section": 16, "summary": 256}

QA_PROMPT = {
    "en": "Read the following document and answer the question.\n\n{context}\n\nNow answer the "
    "question based on the document above. Only give the answer and do not output any other "
    "words.\n\nQuestion: {input}\nAnswer:",
    "de": "Lesen Sie das folgende Dokument und beantworten Sie die Frage.\n\n{context}\n\n"
    "Beantworten Sie nun die Frage anhand des obigen Dokuments. Geben Sie nur die Antwort und "
    "keine weiteren Wörter aus.\n\nFrage: {input}\nAntwort:",
    "zh": "阅读以下文档并回答问题。\n\n{context}\n\n现在请根据上面的文档回答问题，只给出答案，"
    "不要输出任何其他字词。\n\n问题：{input}\n回答：",
}

SUMMARY_PROMPT = {
    "en": "You are given several manual pages.\n\n{context}\n\n{input}\n\nSummary:",
    "de": "Gegeben sind mehrere Handbuchseiten.\n\n{context}\n\n{input}\n\nZusammenfassung:",
    "zh": "下面给出若干手册页。\n\n{context}\n\n{input}\n\n总结：",
}

SUMMARY_QUESTION = {
    "en": "For each manual page above, write one line with its name and a short description of "
    "what it is for.",
    "de": "Schreiben Sie für jede Handbuchseite oben eine Zeile mit ihrem Namen und einer kurzen "
    "Beschreibung, wofür sie da ist.",
    "zh": "请为上面的每个手册页写一行，给出它的名称和简短的用途说明。",
}

#: Heading of the n-th section/page in a haystack.
SECTION_LABEL = {"en": "Section {n}", "de": "Abschnitt {n}", "zh": "第{n}节"}

NAMES = {
    "en": ["Alice", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ingrid",
           "Jonas", "Keiko", "Liam", "Marta", "Nadia", "Oscar", "Priya", "Quentin", "Rosa",
           "Samir", "Tilda", "Umar", "Vera", "Walter", "Yusuf", "Zoe"],
    "de": ["Anna", "Bernd", "Carla", "Dieter", "Erika", "Fritz", "Gisela", "Heinz", "Ilse",
           "Jürgen", "Katrin", "Lothar", "Monika", "Norbert", "Olga", "Peter", "Renate",
           "Stefan", "Tanja", "Uwe", "Vanessa", "Wolfgang", "Yvonne", "Zacharias"],
    "zh": ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨帆", "赵磊", "黄敏", "周杰", "吴霞",
           "徐明", "孙丽", "马超", "朱琳", "胡军", "郭涛", "林峰", "何雪", "高翔", "罗兰"],
}  # fmt: skip

WORDS = {
    "en": ["amber", "anchor", "banjo", "basil", "beacon", "canyon", "cedar", "comet", "copper",
           "dolphin", "falcon", "fennel", "glacier", "harbor", "hazel", "island", "juniper",
           "lantern", "lemon", "marble", "meadow", "nutmeg", "orchid", "otter", "pepper",
           "quartz", "raven", "saffron", "sparrow", "thistle", "tulip", "velvet", "walnut",
           "willow", "zephyr"],
    "de": ["Ahorn", "Anker", "Birne", "Bernstein", "Drossel", "Eiche", "Falke", "Fenchel",
           "Gletscher", "Hafen", "Himbeere", "Igel", "Kastanie", "Kompass", "Laterne", "Lavendel",
           "Marmor", "Möwe", "Nelke", "Otter", "Pfeffer", "Quarz", "Rabe", "Safran", "Schwalbe",
           "Tanne", "Tulpe", "Veilchen", "Walnuss", "Weide", "Zimt", "Zitrone"],
    "zh": ["琥珀", "船锚", "灯塔", "松柏", "彗星", "铜镜", "海豚", "猎鹰", "冰川", "港湾",
           "榛子", "岛屿", "灯笼", "柠檬", "大理石", "草原", "兰花", "水獭", "胡椒", "石英",
           "乌鸦", "藏红花", "麻雀", "郁金香", "丝绒", "核桃", "柳树", "竹林", "茉莉", "枫叶"],
}  # fmt: skip

NEEDLE = {
    "en": 'The code word of {name} is "{word}".',
    "de": "Das Codewort von {name} lautet „{word}“.",
    "zh": "{name}的暗号是“{word}”。",
}
NEEDLE_QUESTION = {
    "en": "What is the code word of {name}?",
    "de": "Wie lautet das Codewort von {name}?",
    "zh": "{name}的暗号是什么？",
}
MULTI_NEEDLE_QUESTION = {
    "en": "What are the code words of {names}? Give them in this order, separated by commas.",
    "de": "Wie lauten die Codewörter von {names}? Nennen Sie sie in dieser Reihenfolge, durch "
    "Kommas getrennt.",
    "zh": "{names}的暗号分别是什么？请按此顺序给出，用逗号分隔。",
}
AND = {"en": " and ", "de": " und ", "zh": "和"}
LIST_SEP = {"en": ", ", "de": ", ", "zh": "、"}

PASSKEY = {
    "en": "The pass key is {key}. Remember it. {key} is the pass key.",
    "de": "Der Passschlüssel lautet {key}. Merken Sie ihn sich. {key} ist der Passschlüssel.",
    "zh": "通行密钥是{key}。记住它。{key}是通行密钥。",
}
PASSKEY_QUESTION = {
    "en": "What is the pass key?",
    "de": "Wie lautet der Passschlüssel?",
    "zh": "通行密钥是什么？",
}

SECTION_QUESTION = {
    "en": 'Which section of the document contains the sentence "{sentence}"? Answer with the '
    'section number only, like "Section 3".',
    "de": "Welcher Abschnitt des Dokuments enthält den Satz „{sentence}“? Antworten Sie nur mit "
    "der Nummer des Abschnitts, etwa „Abschnitt 3“.",
    "zh": "文档的哪一节包含句子“{sentence}”？只回答节的编号，例如“第3节”。",
}


def dataset_name(task: str, lang: str) -> str:
    """``<task>_<lang>``."""
    return f"{task}_{lang}"


def parse_dataset(name: str) -> tuple[str, str]:
    """(task, lang) of a suite data set name; ValueError if it is not one."""
    task, sep, lang = name.rpartition("_")
    if not sep or task not in TASKS or not lang:
        raise ValueError(f"{name!r} is not a suite data set (<task>_<lang>, task in {TASKS})")
    return task, lang


def prompt_for(task: str, lang: str) -> str:
    """The prompt template of a task in a language."""
    return (SUMMARY_PROMPT if task == "summary" else QA_PROMPT)[lang]


def join_names(names: list[str], lang: str) -> str:
    """ "A, B and C" in the language."""
    if len(names) == 1:
        return names[0]
    return LIST_SEP[lang].join(names[:-1]) + AND[lang] + names[-1]
