"""Build a tiny random BGE-M3-style model folder offline (for tests).

The folder has the layout of ``BAAI/bge-m3``: an XLM-RoBERTa encoder saved with
``save_pretrained``, the two heads ``sparse_linear.pt`` (hidden -> 1) and ``colbert_linear.pt``
(hidden -> hidden) as plain ``state_dict`` files, and an XLM-R style tokenizer:
``sentencepiece.bpe.model`` plus a ``tokenizer.json`` built like the one transformers' XLM-R
converter writes (precompiled nmt_nfkc charsmap, runs of spaces collapsed, ``▁`` metaspace,
``<s> A </s>`` template; ids ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>`` last).

The tokenizer is a SentencePiece unigram model trained on generated multilingual text
(English, German, French, Spanish, Russian, Chinese, Japanese, Greek). Nothing is downloaded.
The module does not depend on pytest; run it as a script to build a folder by hand::

    python tests/m3_reference/tiny_m3.py OUT_DIR [--max-position-embeddings N] [--dense-only]
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

import torch

# Words per language (split on spaces; Chinese is split into characters below).
_WORD_TEXT: dict[str, str] = {
    "en": (
        "the of and to in is was for on that with as by at from his her it this which are "
        "document river mountain city language history science music computer network energy "
        "question answer long context retrieval embedding sentence paragraph chapter library "
        "winter summer garden window bridge market teacher student doctor engine train"
    ),
    "de": (
        "der die das und ist nicht ein eine mit von zu den auf für sich dem des im Straße "
        "Fluss Berg Stadt Sprache Geschichte Wissenschaft Musik Rechner Netzwerk Energie "
        "Frage Antwort Dokument Kapitel Bücherei Winter Sommer Garten Fenster Brücke Markt "
        "Lehrer Schüler Ärztin Maschine Zug größer schön über fünf Übersetzung"
    ),
    "fr": (
        "le la les de des et est une un pour dans sur avec pas que qui rivière montagne ville "
        "langue histoire science musique ordinateur réseau énergie question réponse document "
        "chapitre bibliothèque hiver été jardin fenêtre pont marché élève médecin où très"
    ),
    "es": (
        "el la los las de y es un una para en con por que río montaña ciudad lengua historia "
        "ciencia música computadora red energía pregunta respuesta documento capítulo niño "
        "biblioteca invierno verano jardín ventana puente mercado maestro año señor"
    ),
    "ru": (
        "и в не на что с по это как он она они был была город река гора язык история наука "
        "музыка компьютер сеть энергия вопрос ответ документ глава библиотека зима лето сад "
        "окно мост рынок учитель студент врач поезд большой красивый"
    ),
    "zh": (
        "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能"
        "下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加"
        "量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与"
        "关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者"
        "最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长文档检索长上下文河流"
        "城市语言历史科学音乐计算机网络能量问题答案"
    ),
    "ja": (
        "これ は 日本語 の 文章 です 長い 文書 を 読む 質問 に 答える 川 山 町 言葉 歴史 科学 音楽 コンピュータ ネットワーク エネルギー 図書館 冬 夏 庭 "
        "窓 橋 市場 先生 学生 医者 電車 ひらがな カタカナ そして しかし とても"
    ),
    "el": (
        "και το η της των στο από για με ποτάμι βουνό πόλη γλώσσα ιστορία επιστήμη μουσική "
        "δίκτυο ενέργεια ερώτηση απάντηση έγγραφο κεφάλαιο βιβλιοθήκη"
    ),
}
WORDS: dict[str, list[str]] = {
    lang: list(text) if lang == "zh" else text.split() for lang, text in _WORD_TEXT.items()
}
_NO_SPACE = {"zh", "ja"}
_PUNCT = [".", ",", "!", "?", ";", ":", "。", "、", "？", "(", ")", '"', "'", "-", "%"]


def generate_sentence(rng: random.Random, lang: str, n_words: int | None = None) -> str:
    """One sentence of random words from the given language (plus occasional digits)."""
    words = WORDS[lang]
    n = n_words if n_words is not None else rng.randint(4, 14)
    picked = [rng.choice(words) for _ in range(n)]
    if rng.random() < 0.3:
        picked.insert(rng.randrange(len(picked) + 1), str(rng.randint(0, 2030)))
    sep = "" if lang in _NO_SPACE else " "
    end = "。" if lang in _NO_SPACE else rng.choice([".", ".", "?", "!"])
    text = sep.join(picked)
    return text[:1].upper() + text[1:] + end


def generate_text(rng: random.Random, n_sentences: int, langs: list[str] | None = None) -> str:
    """Several random sentences, each from one of ``langs`` (all languages by default)."""
    langs = langs or list(WORDS)
    return " ".join(generate_sentence(rng, rng.choice(langs)) for _ in range(n_sentences))


def _training_corpus(seed: int, n_lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    lines = [generate_text(rng, rng.randint(1, 3)) for _ in range(n_lines)]
    # Every word and punctuation mark alone at least once, so all characters are covered.
    for words in WORDS.values():
        lines.extend(words)
    lines.append(" ".join(_PUNCT) + " 0123456789")
    return lines


def build_tokenizer(out_dir: Path, vocab_size: int = 1500, seed: int = 0) -> None:
    """Train a SentencePiece unigram model and save it in XLM-R layout into ``out_dir``."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    from vllm_landmark.default_models.e5_convert import write_xlmr_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_corpus(seed)),
        model_writer=buf,
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        # Same reserved ids as the original XLM-R sentencepiece model.
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        seed_sentencepiece_size=200_000,
        minloglevel=2,
    )
    spm_bytes = buf.getvalue()
    (out_dir / "sentencepiece.bpe.model").write_bytes(spm_bytes)

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spm_bytes)
    # XLM-R layout (fairseq): the 4 specials first, then the spm pieces after its 3 reserved
    # ones (spm id i -> id i + 1), then <mask> as the last id.
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(p.piece, p.score) for p in proto.pieces[3:]]
    vocab += [("<mask>", 0.0)]
    special = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": len(vocab) - 1}
    charsmap = proto.normalizer_spec.precompiled_charsmap
    write_xlmr_tokenizer(out_dir, vocab, special, charsmap, max_length=8192)


def build_tiny_m3(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 8194,
    vocab_size: int = 1500,
    colbert_dim: int | None = None,
    intermediate_size: int | None = None,
    model_vocab_size: int | None = None,
    with_heads: bool = True,
    heads_format: str = "pt",
    seed: int = 0,
) -> Path:
    """Write a tiny random BGE-M3 folder to ``out_dir`` and return its path.

    ``max_position_embeddings`` follows XLM-R (positions start after the padding index), so the
    encoder takes at most ``max_position_embeddings - 2`` tokens. ``heads_format`` is ``"pt"``
    (like the real model) or ``"safetensors"``; ``with_heads=False`` gives a dense-only folder.
    ``intermediate_size`` defaults to twice the hidden size, ``model_vocab_size`` (embedding
    rows) to the tokenizer's vocabulary; both are for models of a real shape (benchmarks).
    """
    from transformers import XLMRobertaConfig, XLMRobertaModel

    out = Path(out_dir)
    build_tokenizer(out, vocab_size=vocab_size, seed=seed)
    n_vocab = len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"])
    config = XLMRobertaConfig(
        vocab_size=model_vocab_size or n_vocab,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        initializer_range=0.1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        architectures=["XLMRobertaModel"],
    )
    torch.manual_seed(seed)
    model = XLMRobertaModel(config).eval()
    with torch.no_grad():
        # Non-trivial layer norms, so no parameter sits at a symmetric default.
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    if with_heads:
        generator = torch.Generator().manual_seed(seed + 1)
        sparse = torch.nn.Linear(hidden_size, 1)
        colbert = torch.nn.Linear(hidden_size, colbert_dim or hidden_size)
        # Center both heads on the mean hidden state, so that about half of the lexical
        # weights are > 0 and multi-vector similarities take both signs (a random head on
        # raw hidden states gives nearly all-positive similarities, which hides bugs).
        mean_hidden = _mean_hidden_state(model, out, seed)
        with torch.no_grad():
            for lin in (sparse, colbert):
                bound = 1.0 / hidden_size**0.5
                lin.weight.uniform_(-bound, bound, generator=generator)
                lin.bias.copy_(-(lin.weight @ mean_hidden))
        for name, lin in (("sparse_linear", sparse), ("colbert_linear", colbert)):
            state = {k: v.detach().clone().contiguous() for k, v in lin.state_dict().items()}
            if heads_format == "pt":
                torch.save(state, out / f"{name}.pt")
            elif heads_format == "safetensors":
                from safetensors.torch import save_file

                save_file(state, str(out / f"{name}.safetensors"))
            else:
                raise ValueError(
                    f"heads_format must be 'pt' or 'safetensors', not {heads_format!r}"
                )
    return out


def _mean_hidden_state(model: torch.nn.Module, folder: Path, seed: int) -> torch.Tensor:
    """Mean last hidden state over the tokens of a few generated texts."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    rng = random.Random(seed + 2)
    states = []
    with torch.no_grad():
        for _ in range(16):
            ids = tok.encode(generate_text(rng, 2)).ids
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            states.append(hidden)
    return torch.cat(states).mean(dim=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--max-position-embeddings", type=int, default=8194)
    parser.add_argument("--dense-only", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = build_tiny_m3(
        args.out_dir,
        max_position_embeddings=args.max_position_embeddings,
        with_heads=not args.dense_only,
        seed=args.seed,
    )
    print(path)


if __name__ == "__main__":
    main()
