"""compose_llava: a LLaVA folder from a text model + a fresh tower that loads as a LLaVA, keeps the
text model's answers on text, and places images where the conversation has them."""

from __future__ import annotations

import pytest
import torch

from mmtune.errors import UserError
from mmtune.models.compose import IMAGE_TOKEN, VisionTower, compose_llava, multimodal_template
from mmtune.models.vision import load_processor
from tests.helpers.tiny_models import tiny_model_dir


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    text = tiny_model_dir("llama")
    out = compose_llava(str(text), tmp_path_factory.mktemp("compose") / "llava",
                        tower=VisionTower(image_size=32, patch_size=8, hidden_size=32, num_attention_heads=2))
    return text, out


def test_text_rows_give_the_text_models_logits(composed):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    text, out = composed
    tok = AutoTokenizer.from_pretrained(text)
    ids = tok("The quick brown fox", return_tensors="pt")["input_ids"]
    want = AutoModelForCausalLM.from_pretrained(text).eval()(input_ids=ids).logits
    got = AutoModelForImageTextToText.from_pretrained(out).eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want)  # the tiny vocabulary is padded: <image> fits, no resize


def test_image_parts_become_one_token_per_patch(composed):
    from PIL import Image

    _, out = composed
    processor = load_processor(str(out))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert IMAGE_TOKEN + "Colour?" in prompt
    ids = processor(text=[prompt], images=[Image.new("RGB", (64, 48), (200, 0, 0))])["input_ids"][0]
    assert list(ids).count(processor.image_token_id) == (32 // 8) ** 2
    text_only = processor.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text_only == processor.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)


def test_template_without_content_is_refused():
    with pytest.raises(UserError, match="chat_template"):
        multimodal_template("{{ bos_token }}")
