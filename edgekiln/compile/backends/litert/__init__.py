"""edgekiln.compile.backends.litert: ONNX → .tflite (fp32 or full-integer int8) for LiteRT."""
