"""The learner's configuration: every setting, its one default, its description and its checks.

This is the only place a learner default is written. Flows take these models as parameters (Prefect renders
them as forms, one description per field), the CLI reads them from presets, TOML files and ``--set`` overrides
(``tasks.config``), and the benchmark derives every method's configuration from one of them. Pydantic is
plain validation, not orchestration or I/O, so the models live beside the code that reads them; loading
presets from files is ``tasks.config``'s job.

Nested on purpose: ``fusion.epochs`` and ``adapter.epochs`` are different settings with one meaning, so both
stages share :class:`TrainConfig` and differ only in the defaults :class:`LearnerConfig` gives them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

OmegaMode = Literal["slice", "renorm"]
OmegaChoice = Literal["slice", "renorm", "per-source"]
LayerReduction = Literal["sum", "mean"]
EarlyStopping = Literal["new", "kept"]
Pooling = Literal["cls", "mean"]
HeadInit = Literal["previous", "random"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
TranslationBackend = Literal["auto", "opus-mt", "ctranslate2", "apertium"]
RetrainMethod = Literal["redistill", "async-kd", "uniform", "dwa", "gradnorm"]
RetrainParts = Literal["fusion", "adapters"]
RetrainOrder = Literal["joint", "small-first", "large-first"]

# The input prefixes multilingual-e5 was trained with: its sentence vectors and the probes use them.
E5_QUERY_PREFIX, E5_TITLE_PREFIX = "query: ", "passage: "


class _Config(BaseModel):
    """Immutable, strict about unknown keys (a typo such as ``fusion.epoch`` fails instead of being ignored).

    A section given in part (``{"fusion": {"epochs": 2}}``, from a deployment parameter, a TOML file or a test)
    keeps that section's other defaults (``fusion.learning_rate`` stays 1e-4): the defaults of a section live
    in its parent's field, and a partial dict would otherwise lose them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _partial_sections_keep_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, info in cls.model_fields.items():
            value = merged.get(name)
            if isinstance(value, dict) and not info.is_required():
                default = info.get_default(call_default_factory=True)
                if isinstance(default, BaseModel):
                    merged[name] = {**default.model_dump(), **value}
        return merged


class TrainConfig(_Config):
    """One training stage of the one training loop (``models.training.fit``); the paper trains 5 epochs with
    early stopping."""

    epochs: int = Field(5, ge=1, description="Epochs at most; early stopping may end sooner.")
    batch_size: int = Field(32, ge=1, description="Training pairs per optimiser step.")
    learning_rate: float = Field(ge=0, description="Peak AdamW learning rate (linear warm-up, then linear decay).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.06, ge=0, le=1, description="Share of the steps spent warming the rate up.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient-norm clip (0 disables clipping).")
    patience: int = Field(2, ge=0, description="Epochs without a better validation ROC-AUC before stopping.")
    precision: Precision = Field("auto", description="Autocast precision: auto (bf16/fp16 on CUDA, fp32 on CPU).")
    eval_batch_size: int = Field(64, ge=1, description="Pairs per forward pass when scoring validation data.")
    micro_batch_size: int | None = Field(
        None, ge=1, description="Split each batch into micro-batches and accumulate gradients: the same update "
                                "with less activation memory (none: whole batches).")


class DistillConfig(_Config):
    """Attention distillation of stage 3 (defaults follow the paper, except the head, see ``head_init``)."""

    weight: float = Field(1.0, ge=0, description="λ, the weight of L_AD = KL(Ω_{t-1} ‖ ω_t); 0 disables "
                                                 "distillation (plain fusion).")
    # per-source is eq. 9 on translated batches (identical to the slice whenever anything is translated: D_t batches
    # then get no L_AD) and leaves the new adapter's share on its own language to cross-entropy when nothing is
    # translated (the §4.2 variant, or no old language has a route): the slice there trains A_t's share towards 0.
    omega: OmegaChoice = Field("per-source", description="ω_t: the raw slice of the student's attention over the old "
                                                    "adapters (eq. 9), that slice renormalised over them, or per "
                                                    "batch source: the slice on translated T_k batches and the "
                                                    "renormalised slice on D_t batches (so the new adapter's share "
                                                    "on its own language is trained by cross-entropy alone).")
    # new_share, output_weight and translated_ce are off: none beat these defaults on validation over demo and
    # taxonomy x 2 seeds; the two that give each new adapter >= 0.25 of its language's attention (new_share 0.25,
    # output_weight 1 with omega renorm) lose 0.004-0.012 on 7 of 8 runs (benchmarks/reports/distill-extensions-2cpu).
    new_share: float = Field(0.0, ge=0, lt=1, description="ρ: the share of eq. 9's target on translated batches "
                                                          "set aside for the new adapter, [(1 − ρ)·Ω_{t-1}, ρ]; 0 is "
                                                          "eq. 9 (the new adapter's share there is pulled to 0). "
                                                          "Needs ω slice or per-source.")
    output_weight: float = Field(0.0, ge=0, description="μ: weight of output distillation on the batches L_AD "
                                                     "sees, T²·KL(softmax(z_{t-1}/T) ‖ softmax(z_t/T)) between "
                                                     "M_{t-1}'s and the student's relevance logits (LwF's loss, Li & "
                                                     "Hoiem 2016); 0: attention distillation alone (the paper). "
                                                     "Arrivals only: a retraining re-distils attention alone.")
    output_temperature: float = Field(2.0, gt=0, description="T of output distillation (Hinton et al. 2015).")
    translated_ce: bool = Field(False, description="Cross-entropy on the translated batches too (their labels are "
                                                   "D_t's: a translation keeps a pair's relevance), so the fusion and "
                                                   "head also learn the task in the old languages; the paper gives "
                                                   "them L_AD only.")
    # Chosen on validation (benchmarks/reports/options-2seeds-2cpu), with reduction_factor 8: the sum (eq. 9) starts
    # near 12·ln 2 against a CE of 0.69 at t = 2, and CE and L_AD share Adam's moments and the gradient clip.
    layer_reduction: LayerReduction = Field("mean", description="L_AD over the fusion layers: their mean, or their "
                                                                "sum (eq. 9, the paper preset).")
    warm_start: bool = Field(False, description="Initialise Ψ_t from Ψ_{t-1} (fusion parameters do not depend on "
                                                "the number of adapters); the paper starts from random.")
    head_init: HeadInit = Field("previous", description="The new fusion's classification head: copied from "
                                                        "M_{t-1}'s head, or random (the paper).")
    cache_teacher: bool = Field(True, description="Compute the teacher's attention once per example (fp16) and "
                                                  "reuse it every epoch.")
    regularization: bool = Field(True, description="AdapterFusion's value-matrix regulariser (added by hand: only "
                                                   "AdapterTrainer applies it).")

    @model_validator(mode="after")
    def _new_share_needs_slice(self) -> DistillConfig:
        if self.new_share and self.omega == "renorm":
            raise ValueError("new_share sets the new adapter's part of the raw-slice target; omega='renorm' has "
                             "none (use omega='slice' or 'per-source')")
        return self


class TranslationConfig(_Config):
    """Stage 1: which share of D_t is translated into every older language, and by what."""

    fraction: float = Field(0.3, ge=0, le=1, description="Stratified share of D_t's pairs translated into each "
                                                         "older language (0: none, the paper's §4.2 variant).")
    backend: TranslationBackend = Field("auto", description="auto (local Opus-MT/CTranslate2 models, then "
                                                            "Apertium; never downloads), opus-mt, ctranslate2 "
                                                            "or apertium.")


class RetrainConfig(_Config):
    """How a retraining on fresh data of several marketplaces at once trains the champion's shared parts.

    ``redistill`` is a fresh fusion distilling the champion's attention on the pooled data. The others train the
    champion's own fusion and head (or its adapters) jointly on batches that mix every marketplace, each with its
    own loss: ``uniform`` sums them, ``dwa`` and ``gradnorm`` weight them (Liu et al. 2019; Chen et al. 2018), and
    ``async-kd`` (Lu et al. 2024) lets every marketplace converge on its own: once one stops improving, training
    rewinds to its best checkpoint and its loss becomes distillation from that checkpoint's predictions.
    """

    method: RetrainMethod = Field("redistill", description="redistill (a fresh fusion, CE + L_AD against the "
                                                           "champion on the pooled data), async-kd, or a joint "
                                                           "baseline: uniform, dwa, gradnorm.")
    trains: RetrainParts = Field("fusion", description="What the joint methods train: the fusion and its head, or "
                                                       "every marketplace's adapter (fusion and head frozen).")
    eval_every: int = Field(200, ge=1, description="E: optimiser steps between validation passes (the paper: 200).")
    patience: int = Field(3, ge=1, description="Validation passes without a better ROC-AUC after which a "
                                               "marketplace has converged (the paper: 3).")
    rewind: bool = Field(True, description="async-kd: a converged marketplace rewinds every trained parameter and "
                                           "the optimizer to its best checkpoint (the issue's reading of Lu et "
                                           "al.); false keeps training from where it is and only distils from that "
                                           "checkpoint's predictions, so the others keep their progress.")
    max_steps: int = Field(4000, ge=1, description="Step budget of the joint methods; they end there even if a "
                                                   "marketplace has not converged.")
    sample_floor: float = Field(0.1, ge=0, lt=1, description="Smallest share of a batch's rows any marketplace "
                                                             "gets; above it rows are drawn in proportion to each "
                                                             "marketplace's training rows.")
    order: RetrainOrder = Field("joint", description="joint: every marketplace from the start; small-first or "
                                                     "large-first: one at a time, the next joining when the newest "
                                                     "has converged (async-kd only).")
    dwa_temperature: float = Field(2.0, gt=0, description="DWA's T (Liu et al. 2019 use 2).")
    gradnorm_alpha: float = Field(1.5, ge=0, description="GradNorm's α, the restoring force towards equal "
                                                         "training rates (Chen et al. 2018 use 1.5 on NYUv2).")
    gradnorm_learning_rate: float = Field(0.025, gt=0, description="Adam learning rate of GradNorm's task weights "
                                                                   "(Chen et al.'s toy setting: 0.025).")

    @model_validator(mode="after")
    def _order_needs_async(self) -> RetrainConfig:
        if self.order != "joint" and self.method != "async-kd":
            raise ValueError(f"order={self.order!r} needs method='async-kd' (a marketplace joins when the newest "
                             f"has converged, which only async-kd decides)")
        return self


class LearnerConfig(_Config):
    """Everything one arrival needs besides data and the encoder."""

    adapter: TrainConfig = Field(default_factory=lambda: TrainConfig(learning_rate=1e-3),
                                 description="Stage 2: the new language adapter A_t and its head.")
    # AdapterFusion keeps every adapter's output and its key/value projections per layer for the backward pass;
    # micro-batches of 16 keep stage 3's peak memory near stage 2's at the same batch size.
    fusion: TrainConfig = Field(default_factory=lambda: TrainConfig(learning_rate=1e-4, micro_batch_size=16),
                                description="Stage 3: the fresh AdapterFusion Ψ_t and its head.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Stage 3's attention distillation.")
    translation: TranslationConfig = Field(default_factory=TranslationConfig,
                                           description="Stage 1: translated subsets of D_t.")
    early_stopping: EarlyStopping = Field("new", description="Stage 3 keeps the epoch with the best validation "
                                                             "ROC-AUC of the new marketplace, or of the mean over it "
                                                             "and every kept old validation set (kept like test "
                                                             "sets, never trained on).")
    # 8, not the paper's 16: together with the L_AD layer mean, +0.023 mean validation ROC-AUC over three paired runs
    # on the demo and taxonomy benchmarks (+0.028, -0.006, +0.048; benchmarks/reports/options-2seeds-2cpu).
    reduction_factor: int = Field(8, ge=1, description="Pfeiffer adapter bottleneck: hidden size / reduction "
                                                       "factor units (16 in the paper and its preset; 4 adds more).")
    max_length: int = Field(64, ge=8, description="Tokens per (query, product title) pair.")
    pooling: Pooling = Field("cls", description="The vector the heads read: the first ([CLS]) token, or the mean "
                                                "of the last layer over the pair's tokens (how multilingual-e5 "
                                                "was trained). Saved with the model.")
    query_prefix: str = Field("", description="Text put before every query (multilingual-e5 was trained with "
                                              "'query: '). Saved with the model.")
    title_prefix: str = Field("", description="Text put before every product title (multilingual-e5: "
                                              "'passage: '). Saved with the model.")
    seed: int = Field(13, ge=0, description="Seeds initialisation, shuffling and the translated subset.")
    seed_per_marketplace: bool = Field(False, description="Offset the initialisation seed by the adapter's or "
                                                          "fusion's name, so A_1..A_t and Ψ_2..Ψ_t do not all start "
                                                          "from the same random weights.")
    device: Device = Field("auto", description="auto (CUDA when present, with bf16/fp16 autocast), cpu or cuda.")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig, description="Retraining on fresh data of several "
                                                                              "marketplaces at once.")


class GateConfig(_Config):
    """The promotion gate: when a candidate may replace ``relevance@champion``."""

    max_regression: float = Field(0.01, ge=0, description="Largest ROC-AUC drop allowed on any old marketplace "
                                                          "against the champion.")
    adapter_margin: float = Field(0.0, description="The fused model must beat the new marketplace's adapter "
                                                   "alone by more than this.")


class BaselinesConfig(_Config):
    """Hyper-parameters of the benchmark's reference methods; each method reads only its own fields."""

    full: TrainConfig = Field(
        default_factory=lambda: TrainConfig(learning_rate=2e-5),
        description="Full fine-tuning (sm, seq-ft, ewc, lwf, replay); 2e-5 is the usual BERT fine-tuning rate "
                    "(Devlin et al. 2019): higher rates make a 12-layer encoder diverge on small data.")
    ewc_lambda: float = Field(
        1000.0, ge=0, description="EWC's λ in λ/2·Σ F_i (θ_i − θ*_i)²; with a Fisher of mean squared mini-batch "
                                  "gradients (~1e-6..1e-3 per weight) the penalty's gradient matches the task's "
                                  "for the most important weights: the middle of the 10²..10⁴ range for BERT-size "
                                  "models.")
    ewc_fisher_examples: int = Field(2048, ge=1, description="Training pairs used to estimate EWC's Fisher.")
    lwf_alpha: float = Field(1.0, ge=0, description="LwF's λ_o (Li & Hoiem 2017).")
    lwf_temperature: float = Field(2.0, gt=0, description="LwF's distillation temperature T.")
    replay_per_marketplace: int = Field(200, ge=0, description="Pairs kept per old marketplace by replay: a small "
                                                               "episodic memory, a few per cent of a marketplace.")
    hat_smax: float = Field(400.0, gt=0, description="HAT's s_max (Serra et al. 2018).")
    hat_lambda: float = Field(0.75, ge=0, description="HAT's regularisation weight c (Serra et al. 2018).")
    prune_vocabulary: bool = Field(True, description="Full fine-tuning keeps only the embedding rows of tokens "
                                                     "that occur in the method's data (exact).")


TeacherHead = Literal["auto", "mlm", "none"]
LayerMatch = Literal["uniform", "copied"]
LayerChoice = Literal["bottom", "evenly", "bottom-and-last"]
TextSplit = Literal["train", "valid", "test"]


class EncoderDistillConfig(_Config):
    """Distilling the base encoder into a shallower, domain-adapted one (Howell et al.; ``mcl encoder distill``).

    The losses follow DistilBERT's recipe, which the paper uses: T = 2, α_ce / α_mlm / α_cos = 5 / 2 / 1, 15 %
    dynamic masking (80 / 10 / 10), AdamW at 5e-4 with warm-up. The losses after ``alpha_cos`` apply only to a
    teacher without an MLM head (multilingual-e5-small), which has no logits to match: there the hidden states and
    self-attention distributions carry the distillation (MiniLM, TinyBERT). The student's start and what trains
    (``layer_choice``, ``layer_match``, ``train_layers``) are this project's, chosen on how adapters do on the
    frozen student; the ``paper`` preset restores DistilBERT's: evenly spaced layers, every layer trained.
    """

    layers: list[int] | None = Field(
        None, description="Teacher layers (0-based) copied into the student, in order; none: half the teacher's "
                          "depth, chosen as layer_choice says.")
    # Chosen on the adapter view and the probes' validation scores (benchmarks/reports/encoder-distill-2cpu, run 13):
    # the paper's evenly spaced copy gives adapters 0.684 (teacher 0.935), the bottom five and the last 0.872;
    # distilling every layer of either start brings them down (the paper's recipe: 0.632), distilling only the top
    # layer least (0.806), while it lifts the probes from 0.819 to 0.855 (test).
    layer_choice: LayerChoice = Field("bottom-and-last", description="Which layers a student of half the depth "
                                      "copies when layers is none: bottom-and-last (the first half less one, then "
                                      "the last: [0, 1, 2, 3, 4, 11] of 12), evenly (DistilBERT's and the paper's "
                                      "[0, 2, 4, 7, 9, 11]) or bottom.")
    layer_match: LayerMatch = Field("copied", description="Which teacher layer each student layer's hidden states "
                                                          "and attention are matched to (teachers without an MLM "
                                                          "head): copied (the layer it was copied from, so a copied "
                                                          "block is asked to keep what it computes) or uniform "
                                                          "(student k to teacher 2k+1, MiniLM's mapping).")
    train_layers: int | Literal["all"] = Field(1, description="How many of the student's top layers distillation "
                                               "trains; the embeddings and the layers below stay the teacher's, bit "
                                               "for bit (measured: the fewer layers trained, the better adapters do "
                                               "on the student, and the worse the probes). all: every layer "
                                               "(DistilBERT), with train_word_embeddings deciding the embeddings.")
    teacher_head: TeacherHead = Field("auto", description="Whether the teacher has an MLM head: auto (from its "
                                                          "config's architectures), mlm or none.")
    temperature: float = Field(2.0, gt=0, description="T of the soft-target loss T²·KL(softmax(z_t/T) ‖ "
                                                      "softmax(z_s/T)) (MLM teachers).")
    alpha_ce: float = Field(5.0, ge=0, description="Weight of the soft-target KL on MLM logits (MLM teachers).")
    alpha_mlm: float = Field(2.0, ge=0, description="Weight of the student's masked-LM cross-entropy (MLM teachers).")
    alpha_cos: float = Field(1.0, ge=0, description="Weight of 1 − cos(h_s, h_t) on last hidden states (every "
                                                    "teacher).")
    alpha_mse: float = Field(1.0, ge=0, description="Weight of the MSE between last hidden states (teachers "
                                                    "without an MLM head).")
    alpha_hidden: float = Field(1.0, ge=0, description="Weight of the MSE between student layer k and teacher layer "
                                                       "2k+1 hidden states (teachers without an MLM head).")
    alpha_attention: float = Field(1.0, ge=0, description="Weight of KL(teacher ‖ student) between the self-attention "
                                                          "distributions of the same matched layers, as in MiniLM "
                                                          "(teachers without an MLM head).")
    # The sentence vector (the mean-pooled last layer, what e5 serves and the frozen probes read), measured on the
    # probes' validation scores (benchmarks/reports/encoder-distill-2cpu, runs 6-9): the similarity matrices at 20
    # gave the best mean (0.8613; 0.8531 for run 5, without either and with 45 % more steps), 100 the same (0.8615),
    # the vectors themselves at 20 less (0.8573). An MLM teacher keeps DistilBERT's recipe as the paper has it.
    alpha_pooled: float = Field(0.0, ge=0, description="Weight of the MSE between the student's and the teacher's "
                                                       "mean-pooled last hidden states, the sentence vector e5 "
                                                       "serves (Reimers & Gurevych 2020; teachers without an MLM "
                                                       "head).")
    alpha_similarity: float = Field(20.0, ge=0, description="Weight of the MSE between the in-batch cosine-"
                                                            "similarity matrices of those sentence vectors "
                                                            "(relational distillation, Park et al. 2019; teachers "
                                                            "without an MLM head).")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="Share of real tokens chosen for masking, again "
                                                                 "for every batch (MLM teachers).")
    mask_replace_prob: float = Field(0.8, ge=0, le=1, description="Of the chosen tokens, the share replaced by "
                                                                  "[MASK].")
    random_replace_prob: float = Field(0.1, ge=0, le=1, description="Of the chosen tokens, the share replaced by a "
                                                                    "random token (the rest stay as they are).")
    learning_rate: float = Field(5e-4, gt=0, description="Peak AdamW learning rate (linear warm-up, then linear "
                                                         "decay).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="Share of the optimiser steps spent warming the rate "
                                                              "up.")
    max_grad_norm: float = Field(5.0, ge=0, description="Gradient-norm clip (0 disables clipping).")
    batch_size: int = Field(32, ge=1, description="Texts per forward pass (a micro-batch).")
    gradient_accumulation_steps: int = Field(2, ge=1, description="Micro-batches whose gradients make one optimiser "
                                                                  "step.")
    epochs: int = Field(2, ge=1, description="Passes over the deduplicated in-domain text.")
    group_by_length: bool = Field(True, description="Batch texts of similar length together (random mega-batches "
                                                    "of 50 batches, each sorted by length) so little of a batch is "
                                                    "padding; off: plain random batches.")
    max_steps: int | None = Field(None, ge=0, description="Stop after this many optimiser steps (none: run every "
                                                          "epoch); the schedule is laid out for the steps run. 0: no "
                                                          "distillation, the undistilled copy of the layers is the "
                                                          "result, evaluated and registered like a distilled one (the "
                                                          "best base for adapters measured: benchmarks/reports/"
                                                          "encoder-distill-2cpu, run 13).")
    max_length: int = Field(64, ge=8, description="Tokens per text (queries and titles are short; descriptions are "
                                                  "cut here).")
    train_word_embeddings: bool = Field(True, description="With train_layers all: train the word-embedding matrix "
                                                          "too (DistilBERT does); off keeps it frozen, which saves "
                                                          "the optimiser's memory and time on a 250k vocabulary.")
    checkpoint_steps: int = Field(200, ge=1, description="Save a resumable checkpoint every this many optimiser "
                                                         "steps.")
    splits: list[TextSplit] = Field(["train", "valid"], min_length=1,
                                    description="Which tables' text is distilled on; test is left out so the frozen "
                                                "evaluation scores text the student never saw.")
    descriptions: bool = Field(True, description="Also distil on product descriptions where a table has them.")
    # Off until measured beside the single texts on the frozen probes: on the demo data an en adapter on a student
    # distilled 200 steps with pairs reached test ROC-AUC 0.619 against 0.600 after 520 steps without (one seed).
    pairs: bool = Field(False, description="Also distil on every distinct (query, product title) pair, encoded as "
                                           "one sequence as the relevance model reads it: the adapters sit on a "
                                           "cross-encoder of pairs, which single texts never show the student.")
    # Off: measured beside alpha_similarity=20 (runs 7 and 8), it lowered the probes' validation mean (0.8561 against
    # 0.8613; demo/ja -0.043) while raising their test mean by 0.0018.
    prefixes: bool = Field(False, description="Also distil every query, title and description as multilingual-e5 "
                                              "embeds it, after 'query: ' or 'passage: ' (the form the frozen probes "
                                              "and a learner with query_prefix/title_prefix read); off: the bare text "
                                              "only, as the default learner reads it.")
    max_texts: int | None = Field(None, ge=1, description="Use at most this many deduplicated texts (a seeded "
                                                          "sample; none: all).")
    eval_seeds: int = Field(5, ge=2, description="Probe classifiers per marketplace and encoder, each on its own "
                                                 "seeded sample of the training pairs (the KS test compares the "
                                                 "seeds' ROC-AUCs).")
    probe_fraction: float = Field(0.8, gt=0, le=1, description="Share of a marketplace's training pairs each probe "
                                                               "is fitted on.")
    eval_batch_size: int = Field(64, ge=1, description="Texts per forward pass when embedding for the probes.")
    adapter_rows: int = Field(800, ge=0, description="The adapter view of the evaluation: per marketplace, one "
                              "language adapter and head trained on each frozen encoder (student, teacher, "
                              "undistilled copy) on this many training and validation pairs, with the learner's "
                              "stage-1 settings, and scored on the test split; 0 skips it.")
    latency_pairs: int = Field(64, ge=1, description="(query, title) pairs timed per batch size.")
    latency_batch_sizes: list[int] = Field([1, 32], min_length=1, description="Batch sizes the latency is "
                                                                              "measured at (one CPU thread).")
    latency_repeats: int = Field(3, ge=1, description="Timed passes over the pairs; the median is reported.")
    precision: Precision = Field("auto", description="Autocast precision: auto (bf16/fp16 on CUDA, fp32 on CPU).")
    device: Device = Field("auto", description="auto (CUDA when present), cpu or cuda.")
    seed: int = Field(13, ge=0, description="Seeds the text sample and order, the masking, the student's dropout "
                                            "and the probes' training samples.")

    @model_validator(mode="after")
    def _replacement_shares_fit(self) -> EncoderDistillConfig:
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError("mask_replace_prob + random_replace_prob must be at most 1")
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)
                                        or min(self.layers) < 0):
            raise ValueError("layers must be distinct, non-negative teacher layer indices")
        if self.train_layers != "all" and self.train_layers < 1:
            raise ValueError("train_layers must be at least 1, or all")
        return self


TeacherWeights = Literal["own", "softmax"]


class StudentConfig(_Config):
    """The compact serving student (AMTSS, Chen et al.; ``mcl student distill``): one shared small encoder and one
    head per marketplace, distilled from each marketplace's best teacher with an adaptive choice of which
    marketplaces to train on each epoch.

    ``train.epochs`` is M, the most epochs Algorithm 1 runs; ``train.patience`` ends it sooner when the largest
    margin stops shrinking. Each epoch trains on the active set A only, so an epoch costs K marketplaces' data.
    """

    # 8 bottom layers: fine-tuned on 400 demo pairs, a copy of e5-small's layers 0-7 reaches 0.85 validation ROC-AUC
    # in 3 epochs where 4 or 6 layers (bottom or evenly spaced) and 8 evenly spaced stay at 0.59-0.69
    # (benchmarks/reports/student-depth-2cpu); dropping the top layers is the best way to shorten a pretrained
    # transformer without re-pretraining it (Sajjad et al., 2023). 8 of 12 layers still serve >= 3x the champion.
    layers: int = Field(8, ge=1, description="Encoder layers of the student, copied from the base encoder (or a "
                                             "domain-distilled one) as layer_choice says.")
    layer_choice: LayerChoice = Field(
        "bottom", description="Which of the base encoder's layers the student copies: the first `layers` (bottom; "
                              "drops the top layers), `layers` evenly spaced from its first layer to its last, or "
                              "the first `layers` - 1 and the last (bottom-and-last).")
    weight: float = Field(1.0, ge=0, description="λ, the weight of Σ_i KL(ŷ_i^T ‖ ŷ_i^S) against Σ_i CE(y_i, ŷ_i^S); "
                                                 "0 trains on the labels alone.")
    top_k: int = Field(2, ge=1, description="K: how many marketplaces, largest margin first, the next epoch trains "
                                            "on (all of them when there are at most K).")
    epsilon: float = Field(0.005, ge=0, description="ε: training stops once every marketplace's margin (teacher "
                                                    "minus student validation ROC-AUC) is below it.")
    teacher_weights: TeacherWeights = Field(
        "own", description="Teacher importance weights w_{t,i} on marketplace i: all on i's own (best) teacher, or a "
                           "softmax over every candidate's validation ROC-AUC on i.")
    weight_temperature: float = Field(1.0, gt=0, description="Temperature of the softmax teacher weights (1: the "
                                                             "paper's plain softmax over ROC-AUC; lower favours "
                                                             "the best candidate more).")
    gate_margin: float = Field(0.01, ge=0, description="The student becomes relevance-student@champion only when "
                                                       "every marketplace's validation ROC-AUC is within this of its "
                                                       "teacher's.")
    # A 4-layer encoder fine-tuned end to end: BERT's usual fine-tuning rate, a little higher for the shallower
    # network; patience 3 lets a marketplace that left A come back before early stopping gives up.
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=10, learning_rate=5e-5, patience=3),
                               description="The student's training (the one training loop): epochs is M, the most "
                                           "epochs Algorithm 1 runs.")
    device: Device = Field("auto", description="auto (CUDA when present, with bf16/fp16 autocast), cpu or cuda.")
    seed: int = Field(13, ge=0, description="Seeds the heads' initialisation, dropout and the batch order.")
