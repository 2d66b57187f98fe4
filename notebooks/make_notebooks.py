#!/usr/bin/env python
"""Write the notebooks of this folder from one template (stored without outputs, diff-friendly).

    python notebooks/make_notebooks.py            # rewrite the .ipynb files
    python notebooks/make_notebooks.py --check    # exit 1 if a stored notebook differs

The three training notebooks differ only in their title / introduction and their configuration
cell (``MODEL_NAME``, ``MODEL_CONFIG``); ``vjepa2_training.ipynb`` adds one optional cell for JEPA
self-supervised pretraining. Logic lives in ``training/notebook_utils.py`` and the training code
itself in ``training/runner.py`` / ``training/engine.py``: the cells only configure and call.
Edit this file, not the notebooks, then run it (tests/test_notebooks.py checks they agree).
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

TRAINING = {
    "liquid_s4": dict(
        title="Liquid-S4 on ESC-50",
        intro=(
            "Liquid-S4 (Hasani et al., 2022): a stack of S4 state-space layers whose convolution "
            "kernel is extended by *liquid* input-correlation terms (products of delayed inputs), "
            "run over the 77 time steps a small convolutional stem makes of the 155 x 128 log-mel "
            "(`models/stems.py`; `stem=\"linear\"` gives one token per frame instead), mean-pooled "
            "over time, then a linear classifier. Design notes: `/work/shared/docs/MODEL_NOTES.md` section 1; code: "
            "`models/liquid_s4.py`."),
        config_comment="e.g. {\"d_model\": 192, \"n_layers\": 6}; keys: models/liquid_s4.py",
    ),
    "mamba": dict(
        title="Mamba on ESC-50",
        intro=(
            "Mamba (Gu & Dao, 2023): selective state-space blocks (input-dependent step size, B "
            "and C) with a short causal convolution and a gated branch, over the 77 time steps of "
            "a small convolutional stem (`models/stems.py`; `stem=\"linear\"` projects frames "
            "instead), with a backward branch as in Vim / AuM, mean-pooled, then a linear classifier. Design notes: `MODEL_NOTES.md` section 2; "
            "code: `models/mamba.py` (CPU: the parallel scan; CUDA: `mamba_ssm` kernels when installed)."),
        config_comment="e.g. {\"d_model\": 128, \"bidirectional\": True}; keys: models/mamba.py",
    ),
    "vjepa2": dict(
        title="V-JEPA2-style ViT on ESC-50",
        intro=(
            "A V-JEPA2-style Vision Transformer on the spectrogram: 8-frame x 16-mel tubelets "
            "(a 19 x 8 token grid for a 155 x 128 log-mel), 2-D sin-cos positions, pre-norm "
            "transformer blocks and V-JEPA2's attentive probe as the classifier; `stem=\"conv\"` "
            "embeds the tubelets with early convolutions (same grid), which trains far better on "
            "ESC-50 than the linear embedding. The encoder can "
            "first be pretrained without labels with the JEPA objective (predict the EMA target "
            "encoder's features of masked time-frequency blocks); see the optional cell below. "
            "Design notes: `MODEL_NOTES.md` section 3; code: `models/vjepa2.py`, `training/jepa.py`."),
        config_comment="e.g. {\"embed_dim\": 192, \"depth\": 6}; keys: models/vjepa2.py",
        model_config='{"stem": "conv"}',
    ),
}

SETUP_PATH = """\
import sys
from pathlib import Path

# the repository root (this notebook may run from notebooks/ or from the root)
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "training" / "runner.py").exists())
sys.path.insert(0, str(ROOT))
"""

TINY_NOTE = (
    "**Tiny mode.** With `TOOLKIT_TINY=1` in the environment the notebook runs top to bottom in "
    "seconds: the model's `tiny` preset, 2 epochs, and (unless `TOOLKIT_DATA_DIR` is set) a small "
    "synthetic ESC-50; runs go to `TOOLKIT_RUNS_DIR` (default: a temp folder) and nothing is written "
    "to `checkpoints/`. The tests execute every notebook this way (`tests/test_notebooks.py`). "
    "All settings are in `training/notebook_utils.py`.")


def training_cells(model: str, spec: dict) -> list:
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md(f"# {spec['title']}\n\n{spec['intro']}\n\n"
           "Protocol: train on folds 1-3, select the epoch on fold 4 (validation), report fold 5 "
           "(test) once, with the shared features, augmentation and training engine used by every "
           "model of this repository (`training/runner.py` -> `training/engine.py`; the command "
           f"line equivalent is `python train.py --model {model}`).\n\n{TINY_NOTE}", id="intro"),
        md("## Configuration\n\n`MODEL_CONFIG` overrides the model's constructor keywords on top of "
           "the preset (`tiny` in tiny mode, `gpu` on a CUDA machine, otherwise the CPU defaults); "
           "`TRAIN_OVERRIDES` overrides the engine's hyperparameters on top of the model's "
           "`train_defaults` (epochs, lr, batch_size, weight_decay, mixup, label_smoothing, patience, ...).",
           id="config-md"),
        code(f'MODEL_NAME = "{model}"\n'
             f"MODEL_CONFIG = {spec.get('model_config', '{}')}      # {spec['config_comment']}\n"
             "TRAIN_OVERRIDES = {}   # e.g. {\"epochs\": 30, \"lr\": 1e-3}", id="config"),
        code(SETUP_PATH + """
import torch

import models
from training import notebook_utils as nbu
from training.data import DataSpec, build_datasets
from training.runner import make_train_config, train_model

nbu.quiet_progress_warnings()
env = nbu.notebook_env()   # TOOLKIT_TINY / TOOLKIT_DATA_DIR / TOOLKIT_RUNS_DIR / TOOLKIT_EPOCHS
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PRESET = "tiny" if env.tiny else ("gpu" if DEVICE == "cuda" else None)   # None: the CPU defaults
cfg = make_train_config(MODEL_NAME, device=DEVICE, **nbu.train_overrides(env, TRAIN_OVERRIDES))
spec = DataSpec(root=str(env.data_dir), expansion=1 if env.tiny else None)
OUT_DIR = env.runs_dir / f"{MODEL_NAME}_notebook"      # train.py runs use runs/<model>_esc50
FULL_RUN = nbu.is_full_run(MODEL_NAME, cfg, env)   # only a full run is copied to checkpoints/
if cfg.threads:
    torch.set_num_threads(cfg.threads)

print(env.describe())
print(f"model {MODEL_NAME}, preset {PRESET}, device {DEVICE}, output {OUT_DIR}, ship to checkpoints/: {FULL_RUN}")
print(cfg)""", id="setup"),
        md("## The data\n\nESC-50: 2000 five-second clips, 50 classes, 40 per class, 8 per class in "
           "each of the 5 official folds. Features are 128-bin log-mels (16 kHz, n_fft 1024, hop "
           "512) cropped to 155 frames and cached on disk after the first run (`data/cache/`). "
           "Each epoch sees every training clip `expansion` times (3 random views by default).", id="data-md"),
        code("""train_ds, val_ds, test_ds = build_datasets(spec, progress=True)
splits = {"train (folds 1-3)": train_ds, "val (fold 4)": val_ds, "test (fold 5)": test_ds}
print(nbu.class_count_table(splits))
print(f"{train_ds.num_classes} classes; {len(train_ds)} training views per epoch "
      f"({train_ds.num_clips} clips x {train_ds.expansion}); features {train_ds.feature_cfg.n_frames} frames "
      f"x {train_ds.feature_cfg.n_mels} mels")
nbu.show(nbu.plot_class_counts(splits));""", id="data-counts"),
        md("One training clip: its waveform, its log-mel, the normalised log-mel the model sees "
           "(per-mel-bin statistics of the training folds), and two augmented views (random crop "
           "and circular shift, gain, noise, then SpecAugment masks; mixup is applied per batch "
           "by the engine).", id="clip-md"),
        code("nbu.show(nbu.plot_clip(train_ds, env.data_dir, index=0));", id="clip"),
        md("## The model", id="model-md"),
        code("""feat = train_ds.feature_cfg
model = models.build_model(MODEL_NAME, num_classes=train_ds.num_classes, n_mels=feat.n_mels,
                           n_frames=feat.n_frames, preset=PRESET, **MODEL_CONFIG)
print(f"{MODEL_NAME}: {models.count_parameters(model):,} trainable parameters; config {model.model_config}")
print(nbu.parameter_table(model))
with torch.no_grad():
    x = torch.randn(2, feat.n_frames, feat.n_mels)
    print(f"forward: input {tuple(x.shape)} -> logits {tuple(model.eval()(x).shape)}")
del model   # train_model builds the same model again (same seed)""", id="model"),
    ]
    if model == "vjepa2":
        cells += [
            md("## Optional: JEPA pretraining of the encoder\n\nWith `JEPA_EPOCHS > 0` the encoder "
               "is first pretrained without labels on the training folds (`training/jepa.py`; "
               "fold 4 and 5 are never used) and the supervised run starts from it "
               "(`init_from`). Off by default outside tiny mode: about 0.7 min per epoch on 2 CPU "
               "cores with the CPU configuration; 20 or more epochs are needed to help.", id="jepa-md"),
            code("""JEPA_EPOCHS = 1 if env.tiny else 0
if JEPA_EPOCHS:
    from training import jepa
    JEPA_DIR = env.runs_dir / "vjepa2_jepa"
    jepa.main(["--data-dir", str(env.data_dir), "--out", str(JEPA_DIR), "--epochs", str(JEPA_EPOCHS),
               "--device", DEVICE, *(["--preset", PRESET] if PRESET else []),
               *(["--config", *[f"{k}={v!r}" for k, v in MODEL_CONFIG.items()]] if MODEL_CONFIG else []),
               *(["--max-steps", "2", "--batch-size", "4"] if env.tiny else [])])
    MODEL_CONFIG = {**MODEL_CONFIG, "init_from": str(JEPA_DIR / "encoder.safetensors")}""", id="jepa"),
        ]
    cells += [
        md("## Training\n\nThe shared engine: AdamW with per-group learning rates / weight decay, "
           "linear warm-up then cosine decay, gradient clipping, mixup, label smoothing; the best "
           "epoch on validation accuracy is kept. The curves are redrawn after every epoch. "
           "An interrupted run resumes from `OUT_DIR/last.pt` when the cell is run again (delete "
           "`OUT_DIR` to start afresh, e.g. after changing the configuration).", id="train-md"),
        code("""curves = nbu.LiveCurves(MODEL_NAME, total_epochs=cfg.epochs)
metrics = train_model(MODEL_NAME, spec, OUT_DIR, cfg, preset=PRESET, model_config=MODEL_CONFIG,
                      resume=not env.tiny, on_epoch_end=curves, datasets=(train_ds, val_ds, test_ds),
                      extra_meta={"notebook": f"notebooks/{MODEL_NAME}_training.ipynb"})""", id="train"),
        md("## Test-fold evaluation\n\nThe best-validation checkpoint evaluated once on fold 5.", id="eval-md"),
        code("""print(nbu.format_table([{k: metrics[k] for k in ("model", "params", "epochs_run", "best_epoch", "val_acc",
                                                 "test_acc", "test_macro_f1", "mean_epoch_time_s")}]))
print("hardest classes:", nbu.worst_classes(metrics["test_per_class_accuracy"]))
print("most frequent confusions (true, predicted, count):",
      nbu.top_confusions(metrics["test_confusion_matrix"], test_ds.class_names))
nbu.show(nbu.plot_confusion(metrics["test_confusion_matrix"], test_ds.class_names,
                            f"{MODEL_NAME}: fold-5 confusion matrix (rows normalised)"));""", id="eval"),
        md("## The checkpoint\n\n`OUT_DIR/best.safetensors` holds the weights and everything "
           "needed to use them (model config, class names, feature config, normalisation); it "
           "loads without pickle. A full run (not tiny, at least the model's default number of "
           "epochs) is copied to `checkpoints/<model>_esc50.safetensors` with its "
           "`.history.json` and `.metrics.json`, which `compare_models.ipynb` reads; an existing "
           "one is replaced only by a run with higher validation accuracy.", id="ckpt-md"),
        code("""from training.engine import evaluate

best = OUT_DIR / "best.safetensors"
reloaded, meta = nbu.load_model(best)
check = evaluate(reloaded, test_ds)["accuracy"]
print(f"{best} ({best.stat().st_size / 1e6:.2f} MB): {meta['model_name']}, {len(meta['class_names'])} classes, "
      f"test acc after reloading {check:.4f} (run: {metrics['test_acc']:.4f})")
if FULL_RUN:
    nbu.ship_checkpoint(OUT_DIR, MODEL_NAME, env.checkpoint_dir)
else:
    print("not copied to checkpoints/ (tiny mode or fewer epochs than the model's default)")""", id="ckpt"),
    ]
    return cells


def compare_cells() -> list:
    md, code = new_markdown_cell, new_code_cell
    return [
        md("# Comparing the models on ESC-50\n\n"
           "Reads, for every model `NAME` (Liquid-S4, Mamba, V-JEPA2 ViT, and the baselines when "
           "present), the shipped checkpoint `checkpoints/NAME_esc50.safetensors` with its "
           "`checkpoints/NAME_esc50.history.json` and `checkpoints/NAME_esc50.metrics.json`, or, "
           "when none is shipped, the run folder `runs/NAME_esc50/` (`train.py`) or "
           "`runs/NAME_notebook/` (the training notebooks) with `best.safetensors`, "
           "`history.json` and `metrics.json`. It plots the validation curves, the fold-5 test "
           "accuracies, accuracy against size and against CPU latency (measured here: batch-1 "
           "forward passes), per-class differences, and the accuracy of an ensemble that averages "
           "the models' probabilities on fold 5 (each checkpoint with its own feature "
           "normalisation). Outputs: `results/comparison.png`, `results/per_class.png`, "
           "`results/summary.json` (`benchmarks/collect_results.py` does the same from the command "
           "line).\n\n**Tiny mode.** With `TOOLKIT_TINY=1` the notebook ignores `checkpoints/` and "
           "reads the runs that the training notebooks wrote in tiny mode to `TOOLKIT_RUNS_DIR` "
           "(default: a temp folder), on the data of `TOOLKIT_DATA_DIR` (default: the synthetic "
           "ESC-50 they used); its outputs go to `<runs>/results/`.", id="intro"),
        code(SETUP_PATH + """
import torch
import matplotlib.pyplot as plt

from training import notebook_utils as nbu

nbu.quiet_progress_warnings()
env = nbu.notebook_env()   # TOOLKIT_TINY / TOOLKIT_RUNS_DIR / TOOLKIT_CHECKPOINT_DIR / TOOLKIT_RESULTS_DIR
MODELS = [*nbu.MAIN_MODELS, *nbu.BASELINES]       # shown when results exist
LATENCY_REPEATS = 3 if env.tiny else 30            # batch-1 forward passes per model (median)
if env.tiny:
    torch.set_num_threads(1)                       # tiny models: one thread is fastest
results = nbu.find_results(env.checkpoint_dir, env.runs_dir, MODELS)
if not results:
    raise FileNotFoundError(f"no results in {env.checkpoint_dir} or {env.runs_dir}: train a model first")
ENSEMBLE = [m for m in nbu.MAIN_MODELS if m in results] or list(results)
print(env.describe())
print("found:", {n: str(r.checkpoint) for n, r in results.items()})""", id="setup"),
        md("## Results and CPU latency\n\nLatency: median of batch-1 forward passes of one "
           "`[1, 155, 128]` input on this machine's CPU (other processes may share it).", id="table-md"),
        code("""latency = nbu.checkpoint_latencies(results, repeats=LATENCY_REPEATS)
print(f"torch threads: {torch.get_num_threads()}")
print(nbu.results_table(results, latency))""", id="table"),
        md("## Validation curves", id="curves-md"),
        code("""fig, ax = plt.subplots(figsize=(7, 4))
nbu.plot_val_curves(results, ax)
nbu.show(fig);""", id="curves"),
        md("## Ensemble\n\nThe mean of the members' class probabilities on fold 5 (each member "
           "re-evaluated from its checkpoint; its accuracy alone should equal the stored test "
           "accuracy).", id="ensemble-md"),
        code("""ens = nbu.ensemble_accuracy(results, env.data_dir, ENSEMBLE)
print(nbu.format_table([{"model": m, "test_acc (stored)": results[m].test_acc, "test_acc (recomputed)": a}
                        for m, a in ens["member_acc"].items()]))
print(f"ensemble of {'+'.join(ens['members'])}: test acc {ens['ensemble_acc']:.4f} (n={ens['n']})")""",
             id="ensemble"),
        md("## Comparison figure", id="figure-md"),
        code("""nbu.show(nbu.comparison_figure(results, latency, ens), env.results_dir / "comparison.png");""",
             id="figure"),
        md("## Per-class accuracy\n\nEach model's per-class test accuracy minus the mean over "
           "models (classes sorted from hardest to easiest), and the classes with the largest "
           "spread between models.", id="per-class-md"),
        code("""nbu.show(nbu.plot_per_class(results), env.results_dir / "per_class.png")
print(nbu.format_table(nbu.largest_differences(results), floatfmt=".2f"))""", id="per-class"),
        code("""path = nbu.write_json(env.results_dir / "summary.json", nbu.summary(results, latency, ens))
print(f"wrote {path}, {env.results_dir / 'comparison.png'}, {env.results_dir / 'per_class.png'}")""",
             id="summary"),
    ]


def notebook(cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    return nb


def build_all() -> dict[str, nbformat.NotebookNode]:
    out = {f"{m}_training.ipynb": notebook(training_cells(m, s)) for m, s in TRAINING.items()}
    out["compare_models.ipynb"] = notebook(compare_cells())
    return out


def render(nb: nbformat.NotebookNode) -> str:
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv=None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for name, nb in build_all().items():
        path, text = HERE / name, render(nb)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        elif not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run python notebooks/make_notebooks.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
