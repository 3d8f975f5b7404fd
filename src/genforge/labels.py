"""Class labels as users give them (an index, a class name, one per image), checked against a model's
classes. Torch-free: `genforge.load`'s generators and the runtime share it."""

from __future__ import annotations

from genforge.errors import UserError


def label_index(classes: list[str], label: int | str) -> int:
    """A class index from an int or a class name ("7", "Sneaker")."""
    if isinstance(label, str):
        if label in classes:
            return classes.index(label)
        if not label.lstrip("-").isdigit():
            raise UserError(f"Unknown label '{label}'. This model's classes: {', '.join(classes)}.")
        label = int(label)
    if not 0 <= int(label) < len(classes):
        raise UserError(f"Label {label} is out of range: this model has {len(classes)} classes (0..{len(classes) - 1}).")
    return int(label)


def label_indices(classes: list[str], conditional: bool, labels, n: int) -> list[int] | None:
    """One class index per image from one label or a list; None when no label is given."""
    if labels is None:
        return None
    if not conditional:
        raise UserError("This model is not class-conditional: drop --label / labels.")
    if isinstance(labels, (int, str)) or getattr(labels, "ndim", None) == 0:  # a Python or numpy scalar
        labels = [labels] * n
    labels = [label_index(classes, lab) for lab in labels]
    if len(labels) != n:
        raise UserError(f"Got {len(labels)} labels for {n} images: give one label, or one per image.")
    return labels


def cycle_labels(labels, n: int):
    """Several labels given for n samples (`--label 3 --label 7 --n 4`): each in turn (3, 7, 3, 7); one label or
    None as given."""
    if isinstance(labels, (list, tuple)) and len(labels) != n:
        return [labels[i % len(labels)] for i in range(n)] if labels else None
    return labels
