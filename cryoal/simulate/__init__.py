"""Synthetic cryo-ET data: macromolecule-like class templates, uniform random poses, missing wedge,
CTF and noise, as subtomograms (`simulate_particles`) or whole tomograms (`simulate_tomograms`).

Import cost is numpy/scipy only (no torch).
"""

from __future__ import annotations

from cryoal.simulate.particles import Imaging, iter_particles, plan_particles, simulate_particles
from cryoal.simulate.shapes import N_NAMED_CLASSES, ClassShape, class_names, class_shape, point_group
from cryoal.simulate.tomograms import BACKGROUND, plan_tomograms, simulate_tomograms

__all__ = [
    "BACKGROUND", "N_NAMED_CLASSES", "ClassShape", "Imaging", "class_names", "class_shape",
    "iter_particles", "plan_particles", "plan_tomograms", "point_group", "simulate_particles",
    "simulate_tomograms",
]
