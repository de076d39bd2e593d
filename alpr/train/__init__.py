"""Training of the default weights on synthetic data: the YOLOv5 plate detector and the STN + LPRNet recogniser."""
