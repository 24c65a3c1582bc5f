"""The conversations the LLaVA tokenisation-parity tests run through every template (and that the by-hand
run of LLaVA-NeXT's own preprocess functions used): LLaVA JSON rows covering where `<image>` sits, two
images, text-only rows, system prompts, multi-turn, empty answers and unicode.

`refused` names why this project refuses a row that LLaVA would train on in a mangled form (the tests assert
the refusal; docs/LLAVA_RECIPES.md says why); None for rows both accept.
"""

from __future__ import annotations

IMAGE = "square.png"


def _row(name: str, turns: list[tuple[str, str]], image: str | list | None = IMAGE, system: str | None = None,
         refused: str | None = None) -> dict:
    conversations = ([{"from": "system", "value": system}] if system is not None else []) + [
        {"from": role, "value": value} for role, value in turns]
    row = {"id": name, "conversations": conversations, "refused": refused}
    if image is not None:
        row["image"] = image
    return row


H, G = "human", "gpt"
CASES = [
    _row("image_first", [(H, "<image>\nWhat colour is the cat?"), (G, "The cat is red.")]),
    _row("image_last", [(H, "What colour is the cat?\n<image>"), (G, "Red.")]),
    _row("image_mid_turn", [(H, "What colour <image> is the cat?"), (G, "It is red.")]),
    _row("image_without_newline", [(H, "<image>What is in the image?"), (G, "A cat.")]),
    _row("image_with_spaces", [(H, "  <image>  \n  Where is the dog?  "), (G, "On the left.")]),
    _row("image_at_turn_end", [(H, "Describe the image briefly. <image>"), (G, "A green square.")]),
    _row("image_only", [(H, "<image>"), (G, "A red cat on a mat.")]),
    _row("image_double_newline", [(H, "<image>\n\nHow many birds are there?"), (G, "Three.")]),
    _row("image_in_second_turn", [(H, "Is this a photo?"), (G, "Yes."), (H, "<image>\nWhat colour is the car?"),
                                  (G, "The car is blue.")]),
    _row("multi_turn_image", [(H, "<image>\nWhat colour is the cat?"), (G, "The cat is red."),
                              (H, "Where is the dog?"), (G, "On the left."), (H, "How many birds are there?"),
                              (G, "There are three birds above the tree.")]),
    _row("two_images", [(H, "<image>\n<image>\nWhich one is on the left?"), (G, "The first one.")],
         image=[IMAGE, IMAGE], refused="2 images"),
    _row("two_placeholders_one_image", [(H, "<image>\nCompare it with <image>"), (G, "They are the same.")],
         refused="appears 2 times for one image"),
    _row("text_only", [(H, "How many birds are there?"), (G, "There are three birds above the tree.")], image=None),
    _row("text_only_multi_turn", [(H, "What is a cube?"), (G, "A shape with six square faces."),
                                  (H, "And a sphere?"), (G, "A round shape.")], image=None),
    _row("system_prompt_image", [(H, "<image>\nWhat colour is the square?"), (G, "Green.")],
         system="Answer the question using a single word or phrase."),
    _row("system_prompt_text_only", [(H, "Which one is on the right?"), (G, "The blue box.")], image=None,
         system="You are a helpful assistant."),
    _row("leading_gpt_turn", [(G, "Hello! Ask me about the image."), (H, "<image>\nIs there a red ball?"),
                              (G, "Yes, there is.")]),
    _row("empty_answer_last", [(H, "<image>\nWhat is this?"), (G, "")]),
    _row("empty_answer_mid", [(H, "<image>\nWhat is this?"), (G, ""), (H, "What colour is it?"), (G, "Red.")]),
    _row("unicode_image", [(H, "<image>\nQuelle est la couleur du café ? 日本語で答えて 🐱"),
                           (G, "Rouge — très bien, 赤です。🐈")]),
    _row("unicode_text_only", [(H, "Ça va? Straße, naïve, Ελληνικά"), (G, "Très bien, merci! ✓")], image=None),
    _row("answer_trailing_newline", [(H, "<image>\nIs the man smiling?"), (G, "Yes.\n")]),
    _row("question_inner_newlines", [(H, "<image>\nLine one.\nLine two.\n\nLine four?"), (G, "Four lines.")]),
    _row("long_answer", [(H, "<image>\nDescribe the image in detail."),
                         (G, "The image shows a kitchen with a table, four chairs and a bowl of fruit on the counter. "
                             "A man is riding a bike down the street while a woman walks her dog.")]),
    _row("numbers_and_punctuation", [(H, "<image>\nHow many: 12, 20 or 42?"), (G, "12 (twelve); not 20!")]),
    _row("answer_leading_space", [(H, "<image>\nIs there a red ball above the table?"), (G, " Yes, there is.")]),
    _row("image_in_answer", [(H, "What is shown?"), (G, "<image>\nA cat.")], refused="is in a 'gpt' turn"),
    _row("image_without_placeholder", [(H, "What colour is the cat?"), (G, "The cat is red.")]),
]
