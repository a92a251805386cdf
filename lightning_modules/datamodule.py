"""The DataModule: real corpora from the data dir, cleaned, split, tokenized once and cached."""

from __future__ import annotations

import json
import os
import time
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase
from typing_extensions import override

from lightning_modules.augmentation import Augmentation, AugmentedDataset, augmented_rows
from lightning_modules.batching import PadCollator, ResumableSampler, TokenizedDataset
from lightning_modules.corpus import (
    Column,
    CorpusFormat,
    Example,
    RareClasses,
    clean,
    find_rare_classes,
    limit_per_class,
    normalize_text,
    read_raw,
    read_texts,
    stratified_split,
)
from lightning_modules.errors import PocketbertError
from lightning_modules.hub import PACKAGED_VOCAB_NAME, load_tokenizer, packaged_vocab
from lightning_modules.token_cache import tokenize, tokenizer_fingerprint

# The DataModule resumes its sampler mid-epoch itself (see NewsDataModule.state_dict), so Lightning's warning that
# the loader "is not resumable" does not apply.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")

DATA_DIR_ENV = "NEWS_DATA_DIR"
# Without NEWS_DATA_DIR or data_dir, a checkout with the shared data beside it (../shared/data) needs no setup.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPLITS = ("train", "val", "test")
NO_LABEL = -1  # label id of predict rows whose true label is unknown


class NewsDataModule(L.LightningDataModule):
    """Labelled Chinese headlines from the data dir: cleaned, split, tokenized (cached on disk) and batched.

    Args:
        train_file: Training corpus, relative to ``data_dir`` unless absolute. Split stratified into train/val/test
            by ``split_fractions`` when ``val_file`` and ``test_file`` are not given.
        val_file: Optional validation file (same format).
        test_file: Optional test file (same format).
        golden_test_file: Optional golden test set; when given, ``test`` evaluates on it instead of the test split.
        format: Corpus format: ``nlpcc_char`` (label<TAB>spaced chars), ``thucnews`` (title<TAB>class id, names in
            ``label_names_file``), ``tnews`` (CLUE JSON lines), generic ``csv``/``tsv`` (Python csv quoting: a field
            may be enclosed in double quotes, inside them the delimiter, line breaks and ``""`` are text; a field
            starting with ``"`` is read as quoted), ``delimited`` (any ``delimiter`` string such as ``_!_``, no
            quoting, every row as many fields as the first) or ``jsonl`` (one object a line).
        data_dir: Folder the relative paths are read from; defaults to the ``NEWS_DATA_DIR`` environment variable,
            else ``../shared/data`` beside the repository when that exists.
        labels: Label whitelist, in id order. Defaults to the names in ``label_names_file``, else every label in
            the training file, sorted.
        unknown_labels: What to do with rows whose label is not in ``labels``: ``drop`` them (counted in the
            cleaning report; how news16 leaves out ``essay`` and ``story``) or stop with an ``error``.
        label_names_file: ``class.txt`` (one name a line, line i = class id i) or TNEWS's label JSON lines.
        text_field: Text column for csv, tsv and delimited files (a header name, or a 0-based index), or key for
            jsonl.
        label_field: Label column (name or 0-based index) or jsonl key.
        delimiter: Field separator of ``format: delimited`` files, any string (Toutiao: ``_!_``; a tab: ``"\t"``).
        has_header: Whether csv/tsv/delimited files start with a header row; default: yes when ``text_field`` or
            ``label_field`` is a name, no when both are indices.
        min_rows_per_class: Classes with fewer rows than this in the training file (after cleaning and
            ``limit_per_class``) are named in the cleaning report and warned about or dropped (``rare_classes``);
            ``null`` turns the check off. 30 rows split 70/15/15 leave 4-5 test rows: too few to score a class.
        rare_classes: ``warn`` keeps such classes (the report names them), ``drop`` removes their rows from every
            split and their names from the label list.
        predict_file: Texts that ``predict`` classifies instead of the test split: ``.txt`` (one a line) or
            ``.csv``/``.tsv``/``.jsonl`` with a ``text`` column (an optional ``label`` column gives true labels).
            Relative to ``data_dir`` unless absolute or found from the working directory.
        tokenizer: The packaged bert-base-chinese vocabulary (``bert-base-chinese-vocab``, the default; no copy
            needed in the data dir), a WordPiece ``vocab.txt`` (relative to ``data_dir`` or absolute), a local
            tokenizer directory, or a hub name such as ``bert-base-chinese``.
        max_length: Longest token sequence, [CLS] and [SEP] included; longer texts are truncated.
        batch_size: Training batch size.
        eval_batch_size: Validation/test/predict batch size (defaults to 2x ``batch_size``).
        num_workers: DataLoader worker processes.
        split_seed: Seed of the stratified split and of ``limit_per_class`` sampling.
        split_fractions: Train/val/test fractions when the corpus has no splits.
        limit_per_class: Keep at most this many rows per class of every file (quick runs and tests).
        cache_dir: Where tokenized data is cached; defaults to ``.cache/pocketbert`` in the working directory.
        length_grouping: Build training batches of similar lengths (shuffled pools sorted by length), so that
            padding to each batch's longest row wastes little compute; ``false`` gives plain random batches.
        shuffle_seed: Seed of the training order (each epoch shuffles with ``shuffle_seed + epoch``), independent of
            the split: vary it to change the batches while keeping the same train/val/test rows. ``None``:
            ``split_seed`` (the order of runs before this option existed).
        augmentation: Augmented copies of the training rows (never val/test/predict), made once at setup:
            ``lightning_modules.EdaAugmentation`` (synonym replacement from HIT Cilin, character deletion, swap and
            insertion; offline) or ``lightning_modules.BackTranslation`` (needs translation models). A copy keeps
            its original's label and ``index`` (so a distillation teacher's logits are the original's).
            docs/quality.md measures it.
    """

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        test_file: str | None = None,
        golden_test_file: str | None = None,
        format: CorpusFormat = "nlpcc_char",
        data_dir: Path | None = None,
        labels: list[str] | None = None,
        unknown_labels: Literal["drop", "error"] = "drop",
        label_names_file: str | None = None,
        text_field: Column = "text",
        label_field: Column = "label",
        delimiter: str | None = None,
        has_header: bool | None = None,
        min_rows_per_class: int | None = 30,
        rare_classes: RareClasses = "warn",
        predict_file: str | None = None,
        tokenizer: str = PACKAGED_VOCAB_NAME,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        split_seed: int = 42,
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        limit_per_class: int | None = None,
        cache_dir: Path | None = None,
        length_grouping: bool = True,
        shuffle_seed: int | None = None,
        augmentation: Augmentation | None = None,
    ) -> None:
        super().__init__()
        if max_length < 8:
            raise PocketbertError(f"max_length must be at least 8, got {max_length}")
        if batch_size < 1:
            raise PocketbertError(f"batch_size must be positive, got {batch_size}")
        if (val_file is None) != (test_file is None):
            raise PocketbertError("give both val_file and test_file, or neither (then train_file is split 70/15/15)")
        if (format == "delimited") != bool(delimiter):
            raise PocketbertError("format delimited needs a delimiter (e.g. delimiter: \"_!_\"), and delimiter is "
                                  "only for format delimited (csv splits at commas, tsv at tabs)")
        if min_rows_per_class is not None and min_rows_per_class < 1:
            raise PocketbertError(f"min_rows_per_class must be positive or null, got {min_rows_per_class}")
        # The model records the resolved tokenizer path (linked); the raw spec here would clash with it.
        # The augmentation object stays out of hparams (checkpoints load weights_only); config.yaml records it.
        self.save_hyperparameters(ignore=["tokenizer", "augmentation"])
        self.files: dict[str, str | None] = {"train": train_file, "val": val_file, "test": test_file}
        self.golden_test_file = golden_test_file
        self.corpus_format = format
        self.data_dir = data_dir
        self.whitelist = labels
        self.unknown_labels = unknown_labels
        self.label_names_file = label_names_file
        self.text_field, self.label_field = text_field, label_field
        self.delimiter, self.has_header = delimiter, has_header
        self.min_rows_per_class, self.rare_classes = min_rows_per_class, rare_classes
        self.predict_file = predict_file
        self.tokenizer_spec = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = num_workers
        self.split_seed = split_seed
        self.split_fractions = split_fractions
        self.limit = limit_per_class
        self.cache_dir = cache_dir if cache_dir is not None else Path(".cache/pocketbert")
        self.length_grouping = length_grouping
        self.shuffle_seed = split_seed if shuffle_seed is None else shuffle_seed
        self.augmentation = augmentation
        self.augmented_train: AugmentedDataset | None = None  # the training rows plus their augmented copies
        self.datasets: dict[str, TokenizedDataset] = {}
        self.texts: dict[str, list[str]] = {}
        self.true_labels: dict[str, list[str | None]] = {}  # label names per split (None: unknown, predict_file)
        self._resume_at: tuple[int, int] | None = None  # (epoch, samples done) from a checkpoint

    # ---- paths -------------------------------------------------------------------------------------------------
    def resolve(self, name: str) -> Path:
        """``name`` as an absolute path: as given if absolute, else under the data dir."""
        path = Path(name).expanduser()
        if path.is_absolute():
            return path
        return self.resolved_data_dir / path

    @cached_property
    def resolved_data_dir(self) -> Path:
        raw = self.data_dir or os.environ.get(DATA_DIR_ENV)
        if not raw and DEFAULT_DATA_DIR.is_dir():
            rank_zero_info(f"data dir: {DEFAULT_DATA_DIR} ({DATA_DIR_ENV} not set; set it to read another folder)")
            raw = str(DEFAULT_DATA_DIR)
        if not raw:
            raise PocketbertError(
                f"no data dir: set {DATA_DIR_ENV}=/path/to/shared/data, pass --data.init_args.data_dir PATH, or put "
                f"the data at {DEFAULT_DATA_DIR}"
            )
        path = Path(raw).expanduser().resolve()
        if not path.is_dir():
            raise PocketbertError(f"data dir {path} does not exist; set {DATA_DIR_ENV} or --data.init_args.data_dir")
        return path

    @property
    def tokenizer_path(self) -> str:
        """The tokenizer as the model should load it: an absolute vocab/dir path, or a hub name."""
        if self.tokenizer_spec == PACKAGED_VOCAB_NAME:
            return str(packaged_vocab(PACKAGED_VOCAB_NAME))
        candidate = Path(self.tokenizer_spec).expanduser()
        if candidate.is_absolute() or candidate.exists():
            return str(candidate.resolve())
        if self.tokenizer_spec.endswith(".txt"):
            in_data_dir = self.resolve(self.tokenizer_spec)  # a vocab file: needs the data dir
            # vocab/bert-base-chinese-vocab.txt in a data dir without that copy: the packaged one (same content)
            return str(packaged_vocab(in_data_dir) or in_data_dir)
        if (self.data_dir or os.environ.get(DATA_DIR_ENV)) and self.resolve(self.tokenizer_spec).exists():
            return str(self.resolve(self.tokenizer_spec))
        return self.tokenizer_spec

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.tokenizer_path)

    # ---- labels ------------------------------------------------------------------------------------------------
    @cached_property
    def class_file_names(self) -> list[str] | None:
        if self.label_names_file is None:
            return None
        lines = [line.strip() for line in self.resolve(self.label_names_file).read_text("utf-8").splitlines()]
        lines = [line for line in lines if line]
        if self.corpus_format == "tnews":
            return [json.loads(line)["label_desc"] for line in lines]
        return lines

    @cached_property
    def label_names(self) -> list[str]:
        """Class names in id order; travels to the model (and its checkpoint) through a CLI link."""
        if self.whitelist is not None and len(set(self.whitelist)) != len(self.whitelist):
            raise PocketbertError(f"labels has duplicates: {self.whitelist}")
        dropped = self.cleaned_splits["train"][1].rare_classes if self.rare_classes == "drop" else {}
        if self.whitelist is not None:
            return [name for name in self.whitelist if name not in dropped]
        if self.class_file_names is not None:
            return [name for name in self.class_file_names if name not in dropped]
        return sorted({example.label for example in self.cleaned_splits["train"][0]})

    # ---- reading -----------------------------------------------------------------------------------------------
    def _read(self, name: str) -> tuple[list[Example], Any]:
        path = self.resolve(name)
        raw = read_raw(path, self.corpus_format, text_field=self.text_field, label_field=self.label_field,
                       class_names=self.class_file_names, delimiter=self.delimiter, has_header=self.has_header)
        examples, report = clean(raw, path.name, char_separated=self.corpus_format == "nlpcc_char",
                                 whitelist=self.whitelist)
        if self.unknown_labels == "error" and report.outside_whitelist:
            raise PocketbertError(f"{path}: labels {sorted(report.outside_whitelist)} are not in the label list; add "
                                  "them to data.init_args.labels or set data.init_args.unknown_labels: drop")
        if self.limit is not None:
            examples = limit_per_class(examples, self.limit, self.split_seed)
        return examples, report

    @cached_property
    def cleaned_splits(self) -> dict[str, tuple[list[Example], Any]]:
        """Examples and cleaning report of every split (``test`` is the golden file when one is given)."""
        train, report = self._read(str(self.files["train"]))
        rare = find_rare_classes(train, self.min_rows_per_class)
        report.rare_classes, report.rare_action = rare, self.rare_classes
        report.min_rows_per_class = self.min_rows_per_class
        if rare and self.rare_classes == "drop":
            train = [example for example in train if example.label not in rare]
        splits: dict[str, tuple[list[Example], Any]] = {}
        if self.files["val"] is None:
            parts = stratified_split(train, self.split_fractions, self.split_seed)
            splits = {name: (part, report) for name, part in zip(SPLITS, parts, strict=True)}
        else:
            splits["train"] = (train, report)
            for name in ("val", "test"):
                splits[name] = self._read(str(self.files[name]))
        if self.golden_test_file is not None:
            splits["test"] = self._read(self.golden_test_file)
        if rare and self.rare_classes == "drop":
            splits = {name: ([e for e in examples if e.label not in rare], split_report)
                      for name, (examples, split_report) in splits.items()}
        return splits

    @cached_property
    def train_overlap(self) -> dict[str, int]:
        """Rows of the given val/test (or golden) files whose text is also in the training split: a stratified
        split never has any (duplicates go before it), separate files can, and those rows score memory."""
        splits = self.cleaned_splits
        train = {example.text for example in splits["train"][0]}
        return {name: sum(example.text in train for example in splits[name][0]) for name in ("val", "test")
                if splits[name][0] and (self.files[name] is not None or (name == "test" and self.golden_test_file))}

    def overlap_summary(self) -> list[str]:
        """One warning line per split that shares texts with the training split."""
        lines = []
        for name, count in self.train_overlap.items():
            if count:
                source = self.golden_test_file if name == "test" and self.golden_test_file else self.files[name]
                lines.append(f"warning: {count} of {len(self.cleaned_splits[name][0])} {name} rows ({source}) also "
                             "appear in the training split: their scores measure memory, not generalization; remove "
                             "them from one of the files")
        return lines

    def read_predict_file(self) -> tuple[list[str], list[str | None]]:
        """The normalized, non-empty texts of ``predict_file`` and their true labels (None where unknown)."""
        name = str(self.predict_file)
        path = Path(name).expanduser() if Path(name).expanduser().exists() else self.resolve(name)
        rows = read_texts(path, self.text_field if isinstance(self.text_field, str) else "text",
                          self.label_field if isinstance(self.label_field, str) else "label", what="predict_file")
        labels = rows.labels or [None] * len(rows.texts)
        kept = [(normalize_text(text), label) for text, label in zip(rows.texts, labels, strict=True)]
        kept = [(text, label) for text, label in kept if text]
        rank_zero_info(f"predict_file {path}: {len(kept)} texts ({len(rows.texts) - len(kept)} empty rows skipped)")
        if not kept:
            raise PocketbertError(f"predict_file {path} has no non-empty text")
        return [text for text, _ in kept], [label for _, label in kept]

    @property
    def predict_split(self) -> str:
        """What ``predict`` runs on: ``predict`` (the predict_file) or the ``test`` split."""
        return "predict" if self.predict_file is not None else "test"

    # ---- Lightning hooks ---------------------------------------------------------------------------------------
    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        label_ids = {name: i for i, name in enumerate(self.label_names)}
        seen_reports = set()
        for split in SPLITS:
            examples, report = self.cleaned_splits[split]
            if id(report) not in seen_reports:
                seen_reports.add(id(report))
                rank_zero_info(report.summary())
            unknown = sorted({e.label for e in examples} - set(label_ids))
            if unknown:
                raise PocketbertError(f"{split} data has labels {unknown} not in the label list {self.label_names}; "
                                      "add them to --data.init_args.labels or remove those rows")
            if not examples:
                raise PocketbertError(f"the {split} split is empty after cleaning; check the file and the label list")
            texts = [e.text for e in examples]
            tokens = tokenize(texts, self.tokenizer, self.max_length, self.cache_dir,
                              tokenizer_key=self.tokenizer_key, desc=f"tokenizing {split}")
            source = "from cache" if tokens.from_cache else "computed"
            rank_zero_info(f"{split}: {len(texts)} examples, tokens {source}")
            labels = torch.tensor([label_ids[e.label] for e in examples], dtype=torch.long)
            self.datasets[split] = TokenizedDataset(tokens, labels)
            self.texts[split] = texts
            self.true_labels[split] = [e.label for e in examples]
        if self.predict_file is not None:
            texts, names = self.read_predict_file()
            tokens = tokenize(texts, self.tokenizer, self.max_length, self.cache_dir,
                              tokenizer_key=self.tokenizer_key, desc="tokenizing predict_file")
            ids = [label_ids.get(name, NO_LABEL) if name is not None else NO_LABEL for name in names]
            self.datasets["predict"] = TokenizedDataset(tokens, torch.tensor(ids, dtype=torch.long))
            self.texts["predict"] = texts
            self.true_labels["predict"] = [name if name in label_ids else None for name in names]
        for line in self.overlap_summary():
            rank_zero_info(line)
        missing = [name for name in self.label_names if not any(self.datasets["train"].labels == label_ids[name])]
        if missing:
            raise PocketbertError(f"labels {missing} have no training rows; remove them from the label list")
        if self.augmentation is not None:
            self._augment_train()

    def _augment_train(self) -> None:
        """Add the augmentation's copies of the training rows (tokenized and cached like any split)."""
        assert self.augmentation is not None
        start = time.perf_counter()
        parents, texts = augmented_rows(self.augmentation, self.texts["train"])
        seconds = time.perf_counter() - start
        tokens = tokenize(texts, self.tokenizer, self.max_length, self.cache_dir, tokenizer_key=self.tokenizer_key,
                          desc="tokenizing augmented train")
        self.augmented_train = AugmentedDataset(self.datasets["train"], tokens, torch.tensor(parents))
        rank_zero_info(f"augmentation ({self.augmentation.describe()}): {len(texts)} extra training rows from "
                       f"{len(self.texts['train'])} in {seconds:.1f} s")

    @cached_property
    def tokenizer_key(self) -> str:
        return tokenizer_fingerprint(self.tokenizer)

    def _loader_kwargs(self) -> dict[str, Any]:
        if not self.datasets:
            self.setup()
        return {
            "num_workers": self.num_workers,
            "collate_fn": PadCollator(int(self.tokenizer.pad_token_id or 0)),
            "persistent_workers": self.num_workers > 0,
            # a private generator: creating a loader iterator must not draw from the global RNG (dropout's)
            "generator": torch.Generator().manual_seed(self.shuffle_seed),
        }

    def _train_progress(self) -> tuple[int, int]:
        """(epoch, batches of it trained) as Lightning counts them, for mid-epoch resume."""
        fit_loop = self.trainer.fit_loop if self.trainer is not None else None
        if fit_loop is None:
            return 0, 0
        epoch = fit_loop.epoch_progress.current.processed  # type: ignore[attr-defined]
        batches = fit_loop.epoch_loop.batch_progress.current.processed  # type: ignore[attr-defined]
        return epoch, batches

    def _replicas(self) -> tuple[int, int]:
        """(processes, this one's rank) of the run; (1, 0) outside a Trainer."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    @override
    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        kwargs = self._loader_kwargs()
        dataset: Dataset[dict[str, Any]] = self.datasets["train"]
        tokens = self.datasets["train"].tokens
        lengths = tokens.offsets[1:] - tokens.offsets[:-1]
        if self.augmented_train is not None:
            dataset, lengths = self.augmented_train, self.augmented_train.lengths()
        replicas, rank = self._replicas()
        sampler = ResumableSampler(len(lengths), self.shuffle_seed, lengths if self.length_grouping else None,
                                   self.batch_size, num_replicas=replicas, rank=rank)
        if self._resume_at is not None:
            sampler.resume(*self._resume_at)
            self._resume_at = None
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, **kwargs)

    def eval_dataloader(self, split: str, shard: bool = False) -> DataLoader[dict[str, Any]]:
        """An unshuffled loader over the whole of ``split`` (train, val, test or predict); with ``shard``, this
        rank's part of it under DDP (what Lightning's evaluation loops get).

        Under DDP each rank evaluates every ``world_size``-th row and no row twice: Lightning's default
        ``DistributedSampler`` pads an uneven split with repeated rows, which the synced metrics would count twice.
        Ranks may then run one batch apart, which evaluation allows (no gradient sync).
        """
        kwargs = self._loader_kwargs()  # sets the data up first if needed
        replicas, rank = self._replicas()
        if shard and replicas > 1:
            sampler = UnrepeatedDistributedSampler(self.datasets[split], num_replicas=replicas, rank=rank,
                                                   shuffle=False)
            return DataLoader(self.datasets[split], batch_size=self.eval_batch_size, sampler=sampler, **kwargs)
        return DataLoader(self.datasets[split], batch_size=self.eval_batch_size, shuffle=False, **kwargs)

    @override
    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self.eval_dataloader("val", shard=True)

    @override
    def test_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self.eval_dataloader("test", shard=True)

    @override
    def predict_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self.eval_dataloader(self.predict_split, shard=True)

    # Mid-epoch resume lives here rather than in a stateful DataLoader: Lightning creates the train loader early
    # (to estimate the scheduler's total steps) and then never hands a stateful loader its saved state, while the
    # DataModule's state is restored before any loader exists.
    @override
    def state_dict(self) -> dict[str, Any]:
        epoch, batches_done = self._train_progress()
        # The global RNG drives dropout: restoring it makes a resumed run continue bit-for-bit. Under DDP each rank's
        # RNG has drawn for its own batch shapes, so every rank's state is kept (rank 0 writes the checkpoint).
        # Every rank builds the checkpoint (Trainer.save_checkpoint runs on all of them), so the gather pairs up.
        state = torch.get_rng_state()
        replicas, _ = self._replicas()
        states = state.unsqueeze(0)
        if replicas > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [torch.empty_like(state) for _ in range(replicas)]
            torch.distributed.all_gather_object(gathered, state)
            states = torch.stack(gathered)
        # samples_done counts one rank's samples: the sampler skips them in this rank's shard
        return {"torch_rng_state": state, "torch_rng_states": states, "train_epoch": epoch,
                "train_samples_done": batches_done * self.batch_size}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        replicas, rank = self._replicas()
        states = state_dict.get("torch_rng_states")
        if states is not None and len(states) == replicas:
            torch.set_rng_state(states[rank].clone())  # a row view (storage offset) crashes set_rng_state
        elif "torch_rng_state" in state_dict:
            torch.set_rng_state(state_dict["torch_rng_state"])
        if "train_epoch" in state_dict:
            self._resume_at = (int(state_dict["train_epoch"]), int(state_dict["train_samples_done"]))
