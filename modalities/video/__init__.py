"""Video masked modelling: VideoMAE (tube masking, optional v2 dual masking) on tubelet tokens."""
