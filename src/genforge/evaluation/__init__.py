"""Sample-quality evaluation: evaluator networks, FID/KID/IS, precision/recall, memorization.

Features come from an *evaluator*: a small CNN classifier that genforge trains on the real data
(`genforge evaluator train mnist`, or automatically on first use) and caches as safetensors in
`<data_dir>/evaluators/<dataset>-v1/` (or `$GENFORGE_EVALUATORS`), together with the features of the
real train and test splits. Evaluators exist for mnist, fashion-mnist and cifar10; mnist-mini runs
use the mnist one. The standard Inception-v3 FID is an option for users who have its weights file.

Whole runs (what `genforge eval RUN_DIR` calls; writes RUN_DIR/eval.json):

    from genforge.evaluation import evaluate_run
    report = evaluate_run("runs/dcgan", n=10_000, reference="test", data_dir="../shared/data", seed=0)
    report["metrics"]   # fid, kid, is, precision, recall, density, coverage, [conditional_accuracy],
                        # classes_hit, class_entropy, memorization

Any images (uint8 NHWC, or float NCHW in [-1, 1]):

    from genforge.evaluation import load_evaluator, evaluate_images
    ev = load_evaluator("mnist", data_dir)
    evaluate_images(images, ev, labels=None, reference="test", seed=0)["metrics"]

During training (the loop owns when to call it; construction trains/loads the evaluator and
caches the reference statistics, so build it once):

    from genforge.evaluation import TrainingFID
    fid = TrainingFID("mnist", data_dir, n=2000, seed=0, device="cpu")
    value = fid(lambda m, rng: method.sample(ema.shadow, spec, m, None, rng, device))
    # generate(m, rng) -> m images, uint8 (m, H, W, C) or float (m, C, H, W) in [-1, 1]; called in
    # batches of <= 500 with a generator seeded from `seed` (same noise every call).

With torchmetrics directly:

    from torchmetrics.image.fid import FrechetInceptionDistance
    FrechetInceptionDistance(feature=EvaluatorFeatures(ev))   # NCHW uint8 of any size / channels

Definitions are in metrics.py; the memorization threshold is explained in reference.py.

Audio (spoken digits): `evaluate_run` on an audio run scores generated clips through a log-mel CNN trained on
FSDD (`genforge evaluator train fsdd`, or on first use), beside the same numbers for real test clips:

    from genforge.evaluation import load_audio_evaluator, evaluate_clips
    ev = load_audio_evaluator("fsdd", data_dir)
    r = evaluate_clips(clips, ev, labels=digits, sample_rate=8000, seed=0)   # clips: (N, L) float in [-1, 1]
    r["metrics"], r["floor"]["metrics"]   # fid, kid, is, precision, recall, density, coverage,
                                          # [conditional_accuracy], classes_hit, class_entropy,
                                          # speaker_entropy, speakers_hit, memorization

See audio_classifier_net.py (the network and its front end), audio_classifier.py (loading and training) and
audio_metrics.py (the metrics, the floor).

Video (Moving MNIST): a frame CNN genforge trains on real clips (digit identity and position), and from it
Fréchet distances per frame and per clip, identity consistency, label accuracy and motion physics, each beside
real test clips (not FVD: the I3D weights cannot be had offline). See video_evaluator.py and video_metrics.py.
"""

from genforge.evaluation.audio_classifier import (AUDIO_EVALUATOR_DATASETS, AudioEvaluator, AudioEvaluatorNet,
                                                  AudioRecipe, is_audio_evaluator_dataset, load_audio_evaluator,
                                                  mel_filterbank, train_audio_evaluator)
from genforge.evaluation.audio_metrics import clip_reference, evaluate_clips, score_features
from genforge.evaluation.evaluator import (EVALUATOR_DATASETS, RECIPES, Evaluator, EvaluatorNet, evaluator_domain,
                                           evaluators_root, load_evaluator, train_evaluator)
from genforge.evaluation.features import EvaluatorFeatures, InceptionExtractor
from genforge.evaluation.metrics import (FrechetDistance, class_statistics, fid, inception_score, kid, knn_radii,
                                         memorization, nearest_neighbour_distances, prdc)
from genforge.evaluation.reference import Reference, memorization_threshold, reference_features
from genforge.evaluation.runner import EVAL_FILE, METRIC_INFO, evaluate_images, evaluate_run
from genforge.evaluation.training_audio import TrainingAudioFD, training_evaluator
from genforge.evaluation.training_fid import TrainingFID
from genforge.evaluation.training_video import TrainingVideoFD
from genforge.evaluation.video_evaluator import (VIDEO_EVALUATOR_DATASETS, VideoEvaluator, VideoRecipe,
                                                 is_video_evaluator_dataset, load_video_evaluator,
                                                 train_video_evaluator)
from genforge.evaluation.video_metrics import evaluate_video_clips

__all__ = [
    "EVALUATOR_DATASETS", "RECIPES", "Evaluator", "EvaluatorNet", "evaluator_domain", "evaluators_root",
    "load_evaluator", "train_evaluator", "EvaluatorFeatures", "InceptionExtractor", "FrechetDistance",
    "class_statistics", "fid", "inception_score", "kid", "knn_radii", "memorization", "nearest_neighbour_distances",
    "prdc", "Reference", "memorization_threshold", "reference_features", "EVAL_FILE", "METRIC_INFO",
    "evaluate_images", "evaluate_run", "TrainingFID", "TrainingAudioFD", "training_evaluator", "AUDIO_EVALUATOR_DATASETS", "AudioEvaluator",
    "AudioEvaluatorNet", "AudioRecipe", "is_audio_evaluator_dataset", "load_audio_evaluator", "mel_filterbank",
    "train_audio_evaluator", "clip_reference", "evaluate_clips", "score_features", "TrainingVideoFD",
    "VIDEO_EVALUATOR_DATASETS", "VideoEvaluator", "VideoRecipe", "is_video_evaluator_dataset", "load_video_evaluator",
    "train_video_evaluator", "evaluate_video_clips",
]
