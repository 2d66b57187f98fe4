#!/usr/bin/env python
"""Write the notebooks of this folder from one template (stored without outputs, diff-friendly).

    python notebooks/make_notebooks.py            # rewrite the .ipynb files
    python notebooks/make_notebooks.py --check    # exit 1 if a stored notebook differs

The three training notebooks differ only in their title / introduction and their configuration
cell (``MODEL_NAME``, ``MODEL_CONFIG``); ``vjepa2_training.ipynb`` adds one optional cell for JEPA
self-supervised pretraining. Each training notebook's configuration cell holds its model's shipped
recipe (the README's results table; what differs is said in the first cell). Logic lives in the
library (``training/results.py``, ``plots.py``, ``ensemble.py``, ``latency.py``, ``shipping.py``;
``training/notebook_utils.py`` only resolves where the notebooks read and write) and the training
code in ``training/runner.py`` / ``training/engine.py``: the cells only configure and call. The
notebooks write under ``runs/``; ``checkpoints/`` and ``results/`` only when the user sets ``SHIP`` /
``WRITE_RESULTS``.
Edit this file, not the notebooks, then run it (tests/test_notebooks.py checks they agree).
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
def RECIPE(recipe: str, refit: str | None = None, weights: str = "EMA, the last weights") -> str:
    """The notebook's note on the shipped checkpoint: ``recipes/RECIPE.yaml``, or its refit ``recipes/REFIT.yaml``,
    whose model is ``weights``."""
    shipped = (f"`recipes/{recipe}.yaml` refit on folds 1-4 (`python train.py --recipe recipes/{refit}.yaml` "
               "reproduces it)" if refit else
               f"`recipes/{recipe}.yaml` (`python train.py --recipe recipes/{recipe}.yaml` reproduces it)")
    return (
        f"the training recipe. The shipped checkpoint comes from {shipped}: between-class "
        f"mixing, EQ / time-stretch / mel-shift augmentation, 3-s crops, {weights}. This notebook keeps the "
        "engine's plain recipe (mixup, whole clips, the best epoch on fold 4) so that each step stays visible; "
        "to follow the shipped one, put its `train:` settings into `TRAIN_OVERRIDES` and its `augment:` "
        "settings into `AUGMENT`.")


TRAINING = {
    "liquid_s4": dict(
        title="Liquid-S4 on ESC-50",
        intro=(
            "Liquid-S4 (Hasani et al., 2022): a stack of S4 state-space layers whose convolution "
            "kernel is extended by *liquid* input-correlation terms (products of delayed inputs), "
            "run over the time steps a small convolutional stem makes of the log-mel "
            "(`models/stems.py`: 77 for a 155 x 128 log-mel by default, 38 with the shipped recipe's 64 "
            "bands and time pooled by 4; `stem=\"linear\"` gives one token per frame instead), mean-pooled "
            "over time, then a linear classifier. Code: `models/liquid_s4.py`."),
        config_comment="e.g. {\"d_model\": 192, \"n_layers\": 6}; keys: models/liquid_s4.py",
        model_config='{"stem_channels": [32, 64, 128], "stem_pools": [[2, 2], [2, 2], [1, 4]]}',
        feature='{"n_mels": 64}',
        train_overrides='{"epochs": 100}',
        differs=RECIPE("liquid_s4_esc50_mel64_t4", refit="liquid_s4_esc50_mel64_t4_refit"),
    ),
    "mamba": dict(
        title="Mamba on ESC-50",
        intro=(
            "Mamba (Gu & Dao, 2023): selective state-space blocks (input-dependent step size, B "
            "and C) with a short causal convolution and a gated branch, over the time steps of "
            "a small convolutional stem (`models/stems.py`: 77 for a 155 x 128 log-mel by default, 38 with "
            "the shipped recipe's 64 bands and time pooled by 4; `stem=\"linear\"` projects frames "
            "instead), with a backward branch as in Vim / AuM, mean-pooled, then a linear classifier. "
            "Code: `models/mamba.py` (CPU: the pure-PyTorch selective scan of `models/selective_scan.py`; "
            "CUDA: `mamba_ssm` kernels when installed)."),
        config_comment="e.g. {\"d_model\": 128, \"bidirectional\": True}; keys: models/mamba.py",
        model_config='{"stem_channels": [32, 64, 128], "stem_pools": [[2, 2], [2, 2], [1, 4]]}',
        feature='{"n_mels": 64}',
        train_overrides='{"epochs": 100}',
        differs=RECIPE("mamba_esc50_mel64", refit="mamba_esc50_mel64_refit"),
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
            "Code: `models/vjepa2.py`, `training/jepa.py`."),
        config_comment="e.g. {\"embed_dim\": 192, \"depth\": 6}; keys: models/vjepa2.py",
        preset='"mini"',
        model_config='{"stem": "conv"}',
        feature='{"n_mels": 64}',
        augment='{"freq_mask_param": 12}',
        train_overrides='{"epochs": 375, "lr": 1e-3, "ema": 0.999, "select": "last", "val_every": 10}',
        differs=("the folds and the tokens: the defaults below are `recipes/vjepa2_bf16_mel64.yaml` (64 mel "
                 "bands, 2-D tubelets, mixup, bf16 autocast where the CPU has it, EMA, the last weights, 375 "
                 "epochs), which trains on folds 1-3 and watches fold 4; the shipped checkpoint is "
                 "`recipes/vjepa2_bf16_mel64_fb_bc.yaml` refit on folds 1-4 (`python train.py --recipe "
                 "recipes/vjepa2_bf16_mel64_fb_bc_refit.yaml` reproduces it): full-band tubelets (19 time "
                 "tokens), between-class mixing, EQ / time-stretch / mel-shift augmentation, 3-s crops, 525 "
                 "epochs. To follow it, put `\"patch_f\": 64` into the model config, its `train:` settings into "
                 "`TRAIN_OVERRIDES` and its `augment:` settings into `AUGMENT`."),
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
    "synthetic ESC-50; runs go to `TOOLKIT_RUNS_DIR` (default: a temp folder) and `checkpoints/` is "
    "never touched. The tests execute every notebook this way (`tests/test_notebooks.py`). "
    "Settings: `training/notebook_utils.py`.")

OPEN_NOTE = (
    "**Opening it.** `make notebook` (installs `requirements-notebooks.txt` and starts JupyterLab), "
    "or `source .venv/bin/activate && pip install -r requirements-notebooks.txt && jupyter lab`; "
    "run the cells top to bottom. Everything is written under `runs/`.")


def training_cells(model: str, spec: dict) -> list:
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md(f"# {spec['title']}\n\n{spec['intro']}\n\n"
           "Protocol: train on folds 1-3, select the epoch on fold 4 (validation), report fold 5 "
           "(test) once, with the shared features, augmentation and training engine used by every "
           "model of this repository (`training/runner.py` -> `training/engine.py`; the command "
           f"line equivalent is `python train.py --model {model}`).\n\n"
           "**Defaults = the shipped recipe** (`checkpoints/"
           f"{model}_esc50.safetensors`, README \"Results\"), except {spec['differs']}\n\n"
           f"{OPEN_NOTE}\n\n{TINY_NOTE}", id="intro"),
        md("## Configuration\n\n`PRESET` and `MODEL_CONFIG` choose the model (a named preset of "
           "`models/`, then constructor keywords; `None` = the CPU defaults, `\"gpu\"` = the larger GPU "
           "configuration); `TRAIN_OVERRIDES` overrides the engine's hyperparameters on top of the model's "
           "`train_defaults` (epochs, lr, batch_size, weight_decay, mixup, label_smoothing, patience, "
           "threads, crop, bc_mix, ema, select, ...); `AUGMENT` overrides fields of `audio_utils.AugmentConfig`; "
           "`FEATURE` overrides fields of `audio_utils.FeatureConfig` (e.g. `n_mels`); "
           "`EXPANSION` is the number of augmented views of each training clip per epoch. "
           "`SHIP = True` copies a finished full run to `checkpoints/` (only if its validation accuracy "
           "beats the shipped one); by default the run stays in `runs/`.", id="config-md"),
        code(f'MODEL_NAME = "{model}"\n'
             f"PRESET = {spec.get('preset', 'None')}\n"
             f"MODEL_CONFIG = {spec.get('model_config', '{}')}      # {spec['config_comment']}\n"
             f"TRAIN_OVERRIDES = {spec.get('train_overrides', '{}')}   # e.g. {{\"threads\": 2, \"lr\": 1e-3}}\n"
             f"FEATURE = {spec.get('feature', '{}')}          # e.g. {{\"n_mels\": 64}}\n"
             f"AUGMENT = {spec.get('augment', '{}')}          # e.g. {{\"eq_prob\": 0.8, \"stretch_prob\": 0.5}}\n"
             "EXPANSION = 1\n"
             "SHIP = False          # True: copy the finished run to checkpoints/ (the shipping rule applies)",
             id="config"),
        code(SETUP_PATH + """
import torch

import models
from training import notebook_utils as nbu, plots, results
from training.checkpoint import build_from_checkpoint
from training.data import DataSpec, build_datasets
from training.runner import make_train_config, train_model
from training.shipping import ship_checkpoint

nbu.quiet_progress_warnings()
env = nbu.notebook_env()   # TOOLKIT_TINY / TOOLKIT_DATA_DIR / TOOLKIT_RUNS_DIR / TOOLKIT_EPOCHS
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PRESET = "tiny" if env.tiny else PRESET
cfg = make_train_config(MODEL_NAME, device=DEVICE, **nbu.train_overrides(env, TRAIN_OVERRIDES))
spec = DataSpec(root=str(env.data_dir), expansion=EXPANSION, feature_config=FEATURE, augment_config=AUGMENT)
OUT_DIR = env.runs_dir / f"{MODEL_NAME}_notebook"      # train.py runs use runs/<model>_esc50
SHIP = SHIP and nbu.is_full_run(MODEL_NAME, cfg, env)  # never in tiny mode or for short runs

print(env.describe())
print(f"model {MODEL_NAME}, preset {PRESET}, device {DEVICE}, output {OUT_DIR}, ship to checkpoints/: {SHIP}")
print(cfg)""", id="setup"),
        md("## The data\n\nESC-50: 2000 five-second clips, 50 classes, 40 per class, 8 per class in "
           "each of the 5 official folds. Features are log-mels (16 kHz, n_fft 1024, hop 512, 128 mel "
           "bins unless `FEATURE` says otherwise) cropped to 155 frames and cached on disk after the first run (`data/cache/`). "
           "Each epoch sees every training clip `EXPANSION` times (random augmented views).", id="data-md"),
        code("""train_ds, val_ds, test_ds = build_datasets(spec, progress=True)
splits = {"train (folds 1-3)": train_ds, "val (fold 4)": val_ds, "test (fold 5)": test_ds}
print(results.class_count_frame(splits).to_string())
print(f"{train_ds.num_classes} classes; {len(train_ds)} training views per epoch "
      f"({train_ds.num_clips} clips x {train_ds.expansion}); features {train_ds.feature_cfg.n_frames} frames "
      f"x {train_ds.feature_cfg.n_mels} mels")
nbu.show(plots.plot_class_counts(splits));""", id="data-counts"),
        md("One training clip: its waveform, its log-mel, the normalised log-mel the model sees "
           "(per-mel-bin statistics of the training folds), and two augmented views (random crop "
           "and circular shift, gain, noise, then SpecAugment masks; mixup is applied per batch "
           "by the engine).", id="clip-md"),
        code("nbu.show(plots.plot_clip(train_ds, env.data_dir, index=0));", id="clip"),
        md("## The model", id="model-md"),
        code("""feat = train_ds.feature_cfg
model = models.build_model(MODEL_NAME, num_classes=train_ds.num_classes, n_mels=feat.n_mels,
                           n_frames=feat.n_frames, preset=PRESET, **MODEL_CONFIG)
print(f"{MODEL_NAME}: {models.count_parameters(model):,} trainable parameters; config {model.model_config}")
print(results.parameter_frame(model).to_string())
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
               "(`init_from`). Off by default outside tiny mode (the shipped checkpoint was not "
               "pretrained): about 0.7 min per epoch on 2 CPU cores with the CPU configuration; 20 "
               "or more epochs are needed to help.", id="jepa-md"),
            code("""JEPA_EPOCHS = 1 if env.tiny else 0
if JEPA_EPOCHS:
    from training import jepa
    JEPA_DIR = env.runs_dir / "vjepa2_jepa"
    jepa.main(["--data-dir", str(env.data_dir), "--out", str(JEPA_DIR), "--epochs", str(JEPA_EPOCHS),
               "--device", DEVICE, *(["--preset", PRESET] if PRESET else []),
               *[a for k, v in MODEL_CONFIG.items() for a in ("--config", f"{k}={v!r}")],
               *[a for k, v in FEATURE.items() for a in ("--feature", f"{k}={v!r}")],
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
        code("""import pandas as pd

print(pd.DataFrame([{k: metrics[k] for k in ("model", "params", "epochs_run", "best_epoch", "val_acc",
                                              "test_acc", "test_macro_f1", "mean_epoch_time_s")}]).to_string(index=False))
print("hardest classes:", results.worst_classes(metrics["test_per_class_accuracy"]))
print("most frequent confusions (true, predicted, count):",
      results.top_confusions(metrics["test_confusion_matrix"], test_ds.class_names))
nbu.show(plots.plot_confusion(metrics["test_confusion_matrix"], test_ds.class_names,
                              f"{MODEL_NAME}: fold-5 confusion matrix (rows normalised)"));""", id="eval"),
        md("## The checkpoint\n\n`OUT_DIR/best.safetensors` holds the weights and everything "
           "needed to use them (model config, class names, feature config, normalisation); it "
           "loads without pickle. With `SHIP = True`, a full run (not tiny, at least the model's "
           "default number of epochs) is copied to `checkpoints/<model>_esc50.safetensors` with its "
           "`.history.json` and `.metrics.json`, which `compare_models.ipynb` and "
           "`benchmarks/collect_results.py` read; an existing one is replaced only by a run with "
           "higher validation accuracy.", id="ckpt-md"),
        code("""from training.engine import evaluate

best = OUT_DIR / "best.safetensors"
reloaded, meta = build_from_checkpoint(best)
check = evaluate(reloaded, test_ds)["accuracy"]
print(f"{best} ({best.stat().st_size / 1e6:.2f} MB): {meta['model_name']}, {len(meta['class_names'])} classes, "
      f"test acc after reloading {check:.4f} (run: {metrics['test_acc']:.4f})")
if SHIP:
    ship_checkpoint(OUT_DIR, MODEL_NAME, env.checkpoint_dir)
else:
    print(f"not copied to checkpoints/ (SHIP is off, or a tiny / short run); the run stays in {OUT_DIR}")""", id="ckpt"),
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
           "accuracies with 95 % confidence intervals (400 test clips: about +-4.5 points), accuracy "
           "against size and against CPU latency (the stored measurement `results/latency.json`; "
           "models without one are timed here, model forward only), per-class differences, and the "
           "accuracy of an ensemble that averages the models' probabilities on fold 5 (each "
           "checkpoint with its own feature normalisation).\n\n"
           "Outputs go to `runs/results/` (`comparison.png`, `per_class.png`, `summary.json`); with "
           "`WRITE_RESULTS = True` to the repository's `results/`. The README's tables and "
           "`results/` are made by `benchmarks/collect_results.py` (`make results`), from committed "
           "files only.\n\n" + OPEN_NOTE.replace(" Everything is written under `runs/`.", "") + "\n\n"
           "**Tiny mode.** With `TOOLKIT_TINY=1` the notebook ignores `checkpoints/` and "
           "reads the runs that the training notebooks wrote in tiny mode to `TOOLKIT_RUNS_DIR` "
           "(default: a temp folder), on the data of `TOOLKIT_DATA_DIR` (default: the synthetic "
           "ESC-50 they used); its outputs go to `<runs>/results/`.", id="intro"),
        code("WRITE_RESULTS = False   # True: write the figures and summary.json to results/ (default: runs/results/)",
             id="config"),
        code(SETUP_PATH + """
import matplotlib.pyplot as plt

from training import notebook_utils as nbu, plots, results
from training.ensemble import ensemble_accuracy
from training.latency import checkpoint_latencies, read_latency

nbu.quiet_progress_warnings()
env = nbu.notebook_env()   # TOOLKIT_TINY / TOOLKIT_RUNS_DIR / TOOLKIT_CHECKPOINT_DIR / TOOLKIT_RESULTS_DIR
OUT = ROOT / "results" if WRITE_RESULTS and not env.tiny else env.results_dir
MODELS = [*results.MAIN_MODELS, *results.BASELINES]   # shown when results exist
found = results.find_results(env.checkpoint_dir, env.runs_dir, MODELS)
if not found:
    raise FileNotFoundError(f"no results in {env.checkpoint_dir} or {env.runs_dir}: train a model first")
ENSEMBLE = [m for m in results.MAIN_MODELS if m in found and found[m].checkpoint] or \\
    [m for m, r in found.items() if r.checkpoint]
print(env.describe())
print("writing to", OUT)
print("found:", {n: str(r.checkpoint) for n, r in found.items()})""", id="setup"),
        md("## Results and CPU latency\n\nLatency: the stored measurement of the shipped checkpoints "
           "(`results/latency.json`: one 5-s clip, batch 1, features included); runs without one are "
           "timed here (median of batch-1 forward passes of one `[1, 155, 128]` input on this "
           "machine's CPU, which other processes may share).", id="table-md"),
        code("""stored, info = read_latency(ROOT / "results" / "latency.json") if not env.tiny else ({}, {})
latency = {n: ms for n, ms in stored.items() if n in found and found[n].source == "checkpoint"}
measured = checkpoint_latencies({n: r for n, r in found.items() if n not in latency},
                                repeats=3 if env.tiny else 30)
latency.update(measured)
print("measured here:", sorted(measured) or "none", "| from results/latency.json:", sorted(set(latency) - set(measured)))
results.results_frame(found, latency)""", id="table"),
        md("## Validation curves", id="curves-md"),
        code("""fig, ax = plt.subplots(figsize=(7, 4))
plots.plot_val_curves(found, ax)
nbu.show(fig);""", id="curves"),
        md("## Ensemble\n\nThe mean of the members' class probabilities on fold 5 (each member "
           "re-evaluated from its checkpoint; its accuracy alone should equal the stored test "
           "accuracy).", id="ensemble-md"),
        code("""import pandas as pd

ens = ensemble_accuracy({m: found[m].checkpoint for m in ENSEMBLE}, env.data_dir, folds=[5])
print(pd.DataFrame([{"model": m, "test_acc (stored)": found[m].test_acc, "test_acc (recomputed)": a}
                    for m, a in ens["member_acc"].items()]).to_string(index=False))
print(f"ensemble of {'+'.join(ens['members'])}: test acc {ens['acc']:.4f} (n={ens['n']})")
ENSEMBLES = [{"members": ens["members"], "test_acc": ens["acc"], "n_test": ens["n"], "member_test_acc": ens["member_acc"]}]""",
             id="ensemble"),
        md("## Comparison figure\n\nError bars: 95 % binomial confidence intervals of each accuracy; "
           "the accuracy axes are never zoomed in below a 20-point span.", id="figure-md"),
        code("""nbu.show(plots.comparison_figure(found, latency, ENSEMBLES), OUT / "comparison.png");""",
             id="figure"),
        md("## Per-class accuracy\n\nEach model's per-class test accuracy minus the mean over "
           "models (classes sorted from hardest to easiest), and the classes with the largest "
           "spread between models.", id="per-class-md"),
        code("""nbu.show(plots.plot_per_class(found), OUT / "per_class.png")
results.largest_differences(found).round(2)""", id="per-class"),
        code("""path = results.write_json(OUT / "summary.json", results.summary(found, latency, ENSEMBLES))
print(f"wrote {path}, {OUT / 'comparison.png'}, {OUT / 'per_class.png'}")""", id="summary"),
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
