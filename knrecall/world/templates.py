"""Relations, their question and statement templates, and the two-hop compositions of the world.

Statement templates end with `{o}` so that the object is what the model predicts next. Every relation has at least
six paraphrased questions (like TFRKN's 6–7 per hop); every composition has several two-hop questions and a few
statements (the shortcut sentences that link a subject directly to the two-hop answer).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Relation:
    name: str
    domain: str  # entity type of the subject
    range: str  # entity type of the object
    questions: tuple[str, ...]
    statements: tuple[str, ...]


@dataclass(frozen=True)
class Composition:
    name: str
    first: str  # relation 1 (s -> o1)
    second: str  # relation 2 (o1 -> o2)
    questions: tuple[str, ...]
    statements: tuple[str, ...]


RELATIONS = {
    r.name: r
    for r in [
        Relation(
            "born_in", "person", "city",
            questions=(
                "Where was {s} born?",
                "In which city was {s} born?",
                "What is the birthplace of {s}?",
                "Which city is the hometown of {s}?",
                "{s} was born in which city?",
                "Name the city where {s} was born.",
                "What city did {s} come from?",
            ),
            statements=("{s} was born in {o}", "The birthplace of {s} is {o}", "{s} is a native of {o}"),
        ),
        Relation(
            "works_for", "person", "company",
            questions=(
                "Who does {s} work for?",
                "Which company employs {s}?",
                "What is the employer of {s}?",
                "{s} works for which company?",
                "Where is {s} employed?",
                "Which firm does {s} work at?",
            ),
            statements=("{s} works for {o}", "{s} is employed by {o}", "The employer of {s} is {o}"),
        ),
        Relation(
            "located_in", "city", "country",
            questions=(
                "In which country is {s}?",
                "Which country is {s} located in?",
                "{s} is a city in which country?",
                "What country does {s} belong to?",
                "Where is the city of {s}?",
                "{s} lies in which country?",
            ),
            statements=("{s} is located in {o}", "{s} is a city in {o}", "The city of {s} lies in {o}"),
        ),
        Relation(
            "headquartered_in", "company", "city",
            questions=(
                "Where is {s} headquartered?",
                "In which city is {s} based?",
                "Which city is home to {s}?",
                "Where are the headquarters of {s}?",
                "{s} is based in which city?",
                "What city hosts the head office of {s}?",
            ),
            statements=("{s} is headquartered in {o}", "{s} is based in {o}", "The head office of {s} is in {o}"),
        ),
        Relation(
            "official_language", "country", "language",
            questions=(
                "What is the official language of {s}?",
                "Which language is spoken in {s}?",
                "What language do people speak in {s}?",
                "The official language of {s} is what?",
                "In {s}, which language is official?",
                "What do people in {s} speak?",
            ),
            statements=("The official language of {s} is {o}", "People in {s} speak {o}", "In {s} the language is {o}"),
        ),
        Relation(
            "currency", "country", "currency",
            questions=(
                "What is the currency of {s}?",
                "Which currency is used in {s}?",
                "What money is used in {s}?",
                "{s} uses which currency?",
                "What do people in {s} pay with?",
                "What is the official currency of {s}?",
            ),
            statements=("The currency of {s} is the {o}", "{s} pays with the {o}", "People in {s} use the {o}"),
        ),
    ]
}

COMPOSITIONS = {
    c.name: c
    for c in [
        Composition(
            "birth_country", "born_in", "located_in",
            questions=(
                "In which country was {s} born?",
                "What is the country of birth of {s}?",
                "{s} was born in which country?",
                "Which country is the birthplace of {s} in?",
            ),
            statements=("{s} was born in the country of {o}", "The home country of {s} is {o}", "By birth {s} comes from {o}"),
        ),
        Composition(
            "employer_city", "works_for", "headquartered_in",
            questions=(
                "In which city is the employer of {s} based?",
                "Where is the company that employs {s} headquartered?",
                "Which city is home to the employer of {s}?",
                "The firm {s} works for is based in which city?",
            ),
            statements=("The employer of {s} is based in {o}", "{s} works for a company in {o}", "{s} has a job at a firm based in {o}"),
        ),
        Composition(
            "company_country", "headquartered_in", "located_in",
            questions=(
                "In which country is {s} headquartered?",
                "Which country is {s} based in?",
                "{s} has its head office in which country?",
                "In what country are the headquarters of {s}?",
            ),
            statements=("{s} is headquartered in the country of {o}", "The head office of {s} is in the country {o}", "{s} is a company from {o}"),
        ),
        Composition(
            "city_language", "located_in", "official_language",
            questions=(
                "What language is spoken in the city of {s}?",
                "Which language do people in the city of {s} speak?",
                "What is the official language in {s}?",
                "In the city of {s}, which language is official?",
            ),
            statements=("People in the city of {s} speak {o}", "The language of the city of {s} is {o}", "In the city of {s} the official language is {o}"),
        ),
        Composition(
            "city_currency", "located_in", "currency",
            questions=(
                "What currency is used in the city of {s}?",
                "Which money do people in the city of {s} use?",
                "What do shops in {s} take as payment?",
                "In the city of {s}, what is the currency?",
            ),
            statements=("The city of {s} uses the {o}", "Shops in the city of {s} take the {o}", "In the city of {s} people pay with the {o}"),
        ),
    ]
}
