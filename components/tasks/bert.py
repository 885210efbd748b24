"""BERT as a task: masked-LM + next-sentence pretraining on document shards, or sequence classification.

``objective: pretraining`` reads document shard sets (``tvp ingest
wikipedia``: one article per sample, ``.txt`` with one sentence per line).
Two-segment examples are built at training time from each micro-batch's
documents (``components/data/loading/bert_examples.py``), with masks drawn
from each document's generator, which is seeded by (seed, epoch, sample id):
fresh every epoch, identical when a resumed run replays a step.

``objective: classification`` reads labelled text shard sets (``.txt`` and
``.json`` with ``label_name``; ``tvp ingest text-table``) and fine-tunes a
classifier on the pooled [CLS] output; class names come from the training
set's manifest and are kept in the task config, so ids mean the same thing in
every later evaluation and inference.

Assets (text files that travel with every checkpoint): ``vocab.txt`` (a
WordPiece vocabulary trained on the documents, or a given one),
``unigram_counts.json`` (token frequencies of the vocabulary's training
documents: the baselines the masked-LM accuracy is judged against) and
``nsp_documents.txt`` (a fixed pool of training documents from which held-out
examples draw their random second segments, so an evaluation does not depend
on how its samples were batched).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from components.data.loading.bert_examples import ExampleConfig, pretraining_batch, tokenize_documents
from components.data.loading.wordpiece import (
    continuation_mask, special_ids, train_wordpiece, vocab_txt, wordpiece_from_vocab,
)
from components.evaluation.masked_lm import masked_lm_metrics, masked_lm_outputs
from components.models.bert import BertConfig, BertForPreTraining, BertForSequenceClassification
from components.models.bert_hf import export_hf_folder, import_hf_folder
from components.tasks.task import EvalFacts, Task
from components.training.checkpoint import CheckpointError

VOCAB_FILE = "vocab.txt"
UNIGRAM_FILE = "unigram_counts.json"
NSP_POOL_FILE = "nsp_documents.txt"
ASSET_DOCUMENTS = 50_000  # documents read from the training shards to build the vocabulary and the baselines
NSP_POOL_DOCUMENTS = 64
NSP_POOL_SENTENCES = 16  # sentences kept of each pool document
PICTURE_TOKENS = 24  # tokens of the sample sentence whose attention maps are drawn
HEAD_PREFIXES = ("cls.", "mlm.", "nsp.", "classifier.")  # parameters outside the shared encoder


@dataclass
class BertTaskConfig:
    model: BertConfig = field(default_factory=BertConfig)
    objective: Literal["pretraining", "classification"] = "pretraining"
    max_seq_length: int = 128  # tokens per example, [CLS] and [SEP]s included (512 for phase two)
    short_seq_prob: float = 0.1  # share of pretraining examples given a shorter random length
    mask_prob: float = 0.15  # share of tokens chosen for prediction (80% [MASK], 10% random, 10% kept)
    max_predictions: int = 20  # at most this many predicted tokens per example
    whole_word_mask: bool = False  # mask every piece of a word together
    examples_per_document: int = 1  # pretraining examples drawn from each document per epoch
    eval_examples_per_document: int | None = None  # held-out examples per document; None: examples_per_document
    lowercase: bool = True  # uncased vocabulary, accents stripped (BERT's uncased models)
    vocab_file: str | None = None  # a given vocab.txt instead of training one (released weights need theirs)
    labels: list[str] = field(default_factory=list)  # classification: class names by id; empty: from the data
    classifier_dropout: float | None = None  # classification: dropout before the classifier; None: model.dropout
    eval_batch_size: int = 64

    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        if self.max_seq_length > self.model.max_position:
            raise ValueError(f"max_seq_length {self.max_seq_length} exceeds model.max_position "
                             f"{self.model.max_position}")

    def examples(self, evaluation: bool = False) -> ExampleConfig:
        per_document = self.examples_per_document
        if evaluation and self.eval_examples_per_document is not None:
            per_document = self.eval_examples_per_document
        return ExampleConfig(max_seq_length=self.max_seq_length, short_seq_prob=self.short_seq_prob,
                             mask_prob=self.mask_prob, max_predictions=self.max_predictions,
                             whole_word_mask=self.whole_word_mask, examples_per_document=per_document)


@lru_cache(maxsize=4)
def _tokenizer(vocab: str, lowercase: bool) -> Tokenizer:
    return wordpiece_from_vocab(vocab, lowercase=lowercase)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _sentences(value: Any) -> list[str]:
    return [line for line in _text(value).splitlines() if line.strip()]


def _text_seed(text: str) -> np.random.Generator:
    """A generator that depends on a document's text alone: held-out examples are the same however batched."""
    return np.random.default_rng([0x5EED, zlib.crc32(text.encode("utf-8"))])


class BertTask(Task):
    """Pretraining batches hold ``input_ids``, ``token_type_ids``, ``attention_mask``, ``mlm_labels`` (B, L)
    int64 (-100 where nothing is predicted) and ``nsp_label`` (B,); classification batches hold the first
    three and ``label`` (B,)."""

    name = "bert"
    config_type = BertTaskConfig
    asset_columns = ("txt",)
    inference_inputs = {"text": "string"}
    inference_example = {"text": ["the capital of france is [MASK]."]}
    pretrained_layout = "huggingface"

    def __init__(self, config: BertTaskConfig, files: dict[str, str] | None = None):
        super().__init__(config, files)
        classify = config.objective == "classification"
        self.columns = ("txt", "json") if classify else ("txt",)
        self.eval_columns = self.columns

    @property
    def classifies(self) -> bool:
        return self.config.objective == "classification"

    # -- assets -----------------------------------------------------------------------------------------------
    def prepare_assets(self, samples: Iterable[dict[str, bytes]]) -> dict[str, str]:
        documents = [_sentences(s["txt"]) for s in islice(samples, ASSET_DOCUMENTS) if "txt" in s]
        documents = [d for d in documents if d]
        if not documents:
            raise CheckpointError("the training data has no text to build the BERT vocabulary from")
        vocab_size = self.config.model.vocab_size
        if self.config.vocab_file:
            with open(self.config.vocab_file, encoding="utf-8") as f:
                vocab = f.read()
            tokenizer = wordpiece_from_vocab(vocab, lowercase=self.config.lowercase)
        else:
            tokenizer = train_wordpiece((s for d in documents for s in d), vocab_size,
                                        lowercase=self.config.lowercase)
            vocab = vocab_txt(tokenizer)
        if tokenizer.get_vocab_size() > vocab_size:
            raise CheckpointError(f"the vocabulary has {tokenizer.get_vocab_size()} entries but task.model.vocab_size "
                                  f"is {vocab_size}: raise it to at least that")
        counts = np.zeros(vocab_size, dtype=np.int64)
        for doc in tokenize_documents(tokenizer, documents):
            for sentence in doc:
                np.add.at(counts, np.asarray(sentence, dtype=np.int64), 1)
        pool = "\n\n".join("\n".join(d[:NSP_POOL_SENTENCES]) for d in documents[:NSP_POOL_DOCUMENTS])
        return {VOCAB_FILE: vocab, UNIGRAM_FILE: json.dumps(counts.tolist()), NSP_POOL_FILE: pool}

    def fit_to_data(self, training_facts: Callable[[], EvalFacts]) -> "BertTask":
        """A classifier takes its class names from the training set, unless its config already has them."""
        if not self.classifies or self.config.labels:
            return self
        classes = training_facts().classes
        if len(classes) < 2:
            raise CheckpointError("classification needs a training set with at least 2 classes in its manifest "
                                  "or its samples' .json (label, label_name)")
        if sorted(classes) != list(range(len(classes))):
            raise CheckpointError(f"the training set's label ids are {sorted(classes)}: they must be 0..N-1")
        config = replace(self.config, labels=[classes[i] for i in range(len(classes))])
        return type(self)(config, self.files)

    @property
    def tokenizer(self) -> Tokenizer:
        if VOCAB_FILE not in self.files:
            raise CheckpointError("this BERT task has no vocab.txt: prepare its assets from training data first")
        return _tokenizer(self.files[VOCAB_FILE], self.config.lowercase)

    @property
    def unigram_counts(self) -> np.ndarray:
        return _counts(self.files.get(UNIGRAM_FILE, "[]"), self.config.model.vocab_size)

    @property
    def nsp_pool(self) -> list[list[list[int]]]:
        return _pool(self.files.get(NSP_POOL_FILE, ""), self.files[VOCAB_FILE], self.config.lowercase)

    # -- model ------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        if self.classifies:
            if not self.config.labels:
                raise CheckpointError("this BERT classifier has no class names: task.labels is empty")
            return BertForSequenceClassification(self.config.model, len(self.config.labels),
                                                 self.config.classifier_dropout)
        return BertForPreTraining(self.config.model)

    def adapt_weights(self, weights: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """The encoder carries over; heads the new model lacks are dropped, heads the parent lacks start fresh.
        A classifier whose class count changed starts a fresh classifier."""
        target = model.state_dict()
        kept = {}
        for key, value in weights.items():
            if key.startswith(HEAD_PREFIXES) and (key not in target or value.shape != target[key].shape):
                continue
            kept[key] = value
        return super().adapt_weights(kept, model)

    # -- training ---------------------------------------------------------------------------------------------
    def transform_batch(self, batch: dict[str, np.ndarray],
                        rngs: Sequence[np.random.Generator] | None = None) -> dict[str, np.ndarray]:
        if self.classifies:
            return self._classification_batch(batch)
        texts = [_text(t) for t in batch["txt"]]
        if rngs is None:  # evaluation: generators from the text alone
            rngs = [_text_seed(t) for t in texts]
        docs = tokenize_documents(self.tokenizer, [_sentences(t) for t in texts])
        return self._examples(docs, rngs)

    def _examples(self, docs: list[list[list[int]]], rngs: Sequence[np.random.Generator],
                  evaluation: bool = False) -> dict[str, np.ndarray]:
        tokenizer = self.tokenizer  # random replacements come from its entries, not the table's spare rows
        return pretraining_batch(docs, rngs, self.config.examples(evaluation), special_ids(tokenizer),
                                 tokenizer.get_vocab_size(), _continuation(tokenizer))

    def _classification_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        encoded = self._encode([_text(t) for t in batch["txt"]])
        index = {name: i for i, name in enumerate(self.config.labels)}
        labels = []
        for meta in batch["json"]:
            name = _label_name(meta)
            if name not in index:
                raise CheckpointError(f"label {name!r} is not one of this classifier's classes "
                                      f"({', '.join(self.config.labels[:10])}{', ...' if len(index) > 10 else ''})")
            labels.append(index[name])
        return {**encoded, "label": np.asarray(labels, dtype=np.int64)}

    def _encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """[CLS] text [SEP], truncated to max_seq_length, padded: input_ids, token_type_ids, attention_mask."""
        length = self.config.max_seq_length
        ids = special_ids(self.tokenizer)
        out = np.zeros((len(texts), length), dtype=np.int64)
        out[:] = ids.pad
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for i, encoding in enumerate(self.tokenizer.encode_batch(texts, add_special_tokens=False)):
            tokens = [ids.cls, *encoding.ids[: length - 2], ids.sep]
            out[i, : len(tokens)] = tokens
            mask[i, : len(tokens)] = 1
        return {"input_ids": out, "token_type_ids": np.zeros_like(out), "attention_mask": mask}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.classifies:
            logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
            loss = F.cross_entropy(logits, batch["label"])
            accuracy = (logits.argmax(-1) == batch["label"]).float().mean()
            return loss, {"loss": loss.item(), "train_accuracy": accuracy.item()}
        labels = batch["mlm_labels"]
        positions = (labels.view(-1) != -100).nonzero().squeeze(1)  # flat indices of the predicted tokens
        out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], masked_positions=positions)
        mlm = F.cross_entropy(out.mlm_logits.float(), labels.view(-1)[positions])
        nsp = F.cross_entropy(out.nsp_logits.float(), batch["nsp_label"])
        loss = mlm + nsp
        return loss, {"loss": loss.item(), "mlm_loss": mlm.item(), "nsp_loss": nsp.item()}

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    # -- evaluation -------------------------------------------------------------------------------------------
    def eval_transform(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.classifies:
            return self._classification_batch(batch)
        # Each held-out document is paired with the fixed pool (never with its batch neighbours), with a
        # generator from its own text: its example is the same in every batch, on every worker.
        pool, rows = self.nsp_pool, []
        for text in batch["txt"]:
            text = _text(text)
            rng = _text_seed(text)
            partner = pool[int(rng.integers(len(pool)))] if pool else []
            doc = tokenize_documents(self.tokenizer, [_sentences(text)])[0]
            example = self._examples([doc, partner or doc], [rng, np.random.default_rng(0)], evaluation=True)
            rows.append({k: v[: len(v) // 2] for k, v in example.items()})  # the held-out document's own
        return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]} if rows else {}

    @torch.no_grad()
    def eval_step(self, model: nn.Module, batch: dict[str, torch.Tensor], context: Any) -> dict[str, torch.Tensor]:
        if self.classifies:
            logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
            return {"predicted": logits.argmax(-1), "label": batch["label"]}
        out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        return masked_lm_outputs(out.mlm_logits, out.nsp_logits, batch["mlm_labels"], batch["nsp_label"],
                                 torch.from_numpy(self.unigram_counts))

    def eval_reduce(self, outputs: dict[str, np.ndarray], facts: EvalFacts) -> dict[str, float]:
        if self.classifies:
            labels, predicted = outputs["label"], outputs["predicted"]
            return {"accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
                    "num_classes": float(len(self.config.labels)), "num_eval_samples": float(len(labels))}
        return masked_lm_metrics(outputs)

    @torch.no_grad()
    def visualize(self, model: nn.Module, samples: list[dict[str, bytes]], facts: EvalFacts) -> Any:
        """Attention of every layer and head over the first held-out sentence."""
        from components.viz.attention_maps import attention_grid

        sentence = next((s for sample in samples for s in _sentences(sample.get("txt", b""))), None)
        if sentence is None:
            return None
        ids = special_ids(self.tokenizer)
        pieces = self.tokenizer.encode(sentence, add_special_tokens=False)
        tokens = [ids.cls, *pieces.ids[: PICTURE_TOKENS - 2], ids.sep]
        encoder = _encoder(model)
        input_ids = torch.tensor([tokens])
        *_, attentions = encoder(input_ids, torch.zeros_like(input_ids), torch.ones_like(input_ids),
                                 output_attentions=True)
        words = [self.tokenizer.id_to_token(t) or "?" for t in tokens]
        return attention_grid([a[0].float().numpy() for a in attentions], words, title=sentence[:120])

    # -- Hugging Face layout ----------------------------------------------------------------------------------
    @classmethod
    def import_pretrained(cls, folder: Path) -> tuple[dict[str, Any], dict[str, str], dict[str, torch.Tensor]] | None:
        """A Hugging Face BERT folder (``config.json`` with model_type bert, ``model.safetensors``, ``vocab.txt``;
        ``tokenizer_config.json``'s do_lower_case when present) as a pretraining task. Such a folder carries no
        training-document statistics: its unigram baselines are uniform and its NSP pool empty."""
        config_path = folder / "config.json"
        if not config_path.is_file() or json.loads(config_path.read_text()).get("model_type") != "bert":
            return None
        model_cfg, weights, vocab = import_hf_folder(folder)
        if vocab is None:
            raise CheckpointError(f"{folder} has no vocab.txt: the model's token ids mean nothing without it")
        lowercase = True
        tokenizer_config = folder / "tokenizer_config.json"
        if tokenizer_config.is_file():
            lowercase = bool(json.loads(tokenizer_config.read_text()).get("do_lower_case", True))
        config = {"model": asdict(model_cfg), "objective": "pretraining", "lowercase": lowercase,
                  "max_seq_length": min(128, model_cfg.max_position)}
        return config, {VOCAB_FILE: vocab, UNIGRAM_FILE: "[]", NSP_POOL_FILE: ""}, weights

    def export_pretrained(self, weights: dict[str, torch.Tensor], folder: Path) -> Path:
        """``model.safetensors`` + ``config.json`` + ``vocab.txt`` + ``tokenizer_config.json``, which
        transformers' ``from_pretrained`` loads (BertForPreTraining, or BertForSequenceClassification)."""
        out = export_hf_folder(folder, self.config.model, weights, self.files.get(VOCAB_FILE))
        tokenizer = {"do_lower_case": self.config.lowercase, "tokenizer_class": "BertTokenizer",
                     "model_max_length": self.config.model.max_position}
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2) + "\n")
        if self.classifies:
            config = json.loads((out / "config.json").read_text())
            config["id2label"] = {str(i): name for i, name in enumerate(self.config.labels)}
            config["label2id"] = {name: i for i, name in enumerate(self.config.labels)}
            (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return out

    # -- inference --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``text`` → ``label`` and ``probabilities`` (a classifier), or the top token at each [MASK]
        (``mask_predictions``, pretraining)."""
        texts = [str(r.get("text") or "") for r in records]
        batch = {k: torch.from_numpy(v) for k, v in self._encode(texts).items()}
        if self.classifies:
            probabilities = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).softmax(-1)
            return [{"label": self.config.labels[int(p.argmax())], "probabilities": p.tolist()}
                    for p in probabilities]
        out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        mask_id = special_ids(self.tokenizer).mask
        results = []
        for ids, logits in zip(batch["input_ids"], out.mlm_logits):
            where = (ids == mask_id).nonzero().squeeze(1)
            results.append({"mask_predictions": [self.tokenizer.id_to_token(int(t)) or ""
                                                 for t in logits[where].argmax(-1)]})
        return results


def _encoder(model: nn.Module) -> nn.Module:
    """The BertModel inside a pretraining or classification model (and inside a DDP wrapper)."""
    return getattr(model, "module", model).bert


def _label_name(meta: Any) -> str:
    value = json.loads(meta) if isinstance(meta, (bytes, str)) else meta
    if "label_name" in value:
        return str(value["label_name"])
    return str(value["label"])


@lru_cache(maxsize=4)
def _counts(text: str, vocab_size: int) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.int64)
    values = json.loads(text)
    counts[: len(values)] = values[:vocab_size]
    return counts


@lru_cache(maxsize=4)
def _pool(text: str, vocab: str, lowercase: bool) -> list[list[list[int]]]:
    docs = [d.splitlines() for d in text.split("\n\n") if d.strip()]
    return tokenize_documents(_tokenizer(vocab, lowercase), docs) if docs else []


@lru_cache(maxsize=4)
def _continuation(tokenizer: Tokenizer) -> np.ndarray:
    return continuation_mask(tokenizer)
