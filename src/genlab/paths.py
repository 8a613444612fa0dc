"""Fixed output paths, shared by the stages and dvc.yaml (DVC outs need fixed paths)."""

from pathlib import Path

PARAMS = Path("params.yaml")
PARAMS_STAMP = Path("validated/params.ok")  # written by the validate stage; every other stage depends on it
PREPARED_DIR = Path("data/prepared")
MODEL = Path("models/model.pt")
RUN_INFO = Path("models/run.json")
CLASSIFIER = Path("models/classifier.pt")
CLASSIFIER_METRICS = Path("metrics/classifier.json")
CHECKPOINT = Path("checkpoints/train.pt")
TRAINING_RUN = Path("checkpoints/run.json")  # the MLflow run the checkpoint belongs to, until it finishes
TRAIN_METRICS = Path("metrics/train.json")
CURVES_DIR = Path("metrics/curves")
TRAIN_HISTORY = Path("metrics/train_history.csv")
EVAL_METRICS = Path("metrics/eval.json")
MACHINE = Path("metrics/machine.json")  # fingerprint of the machine that trained the model
EXPECTED = Path("metrics/expected.json")  # seed bands for the CI reproduction check
SAMPLES_DIR = Path("samples")
REPORTS_DIR = Path("reports")
