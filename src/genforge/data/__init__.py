"""Image and audio datasets for genforge: readers, downloads, preprocessing and augmentation.

Every image dataset is loaded whole into memory as uint8 NHWC (see ImageDataset); models see float NCHW in
[-1, 1] through to_model_range, and augment_batch works on that batched tensor. Audio datasets (fsdd,
folders of recordings) load as fixed-length float32 mono clips (see AudioDataset). This package depends
on nothing else in genforge except genforge.errors and the numpy signal code in genforge.audio, so the
data layer can be used and tested on its own.
"""

from .audio import (AUDIO_EXTENSIONS, AudioDataset, fit_length, is_audio_dataset, load_audio_dataset, read_audio,
                    trim_silence)
from .dataset import ImageDataset
from .download import download_dataset
from .loading import dataset_info, load_image_dataset
from .registry import KNOWN_DATASETS, resolve_data_dir
from .video import (MOVING_MNIST, VIDEO_EXTENSIONS, Clips, MovingMnist, is_video_dataset, load_clip_folder,
                    read_clip)
from .transforms import Augment, augment_batch, from_model_range, preprocess, to_model_range

__all__ = [
    "MOVING_MNIST", "VIDEO_EXTENSIONS", "Clips", "MovingMnist", "is_video_dataset", "load_clip_folder", "read_clip",
    "ImageDataset",
    "AudioDataset",
    "AUDIO_EXTENSIONS",
    "load_audio_dataset",
    "is_audio_dataset",
    "read_audio",
    "trim_silence",
    "fit_length",
    "load_image_dataset",
    "dataset_info",
    "resolve_data_dir",
    "download_dataset",
    "KNOWN_DATASETS",
    "Augment",
    "preprocess",
    "to_model_range",
    "from_model_range",
    "augment_batch",
]
