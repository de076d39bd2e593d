"""PyTorch -> ONNX export of the served graphs and their numeric verification."""
