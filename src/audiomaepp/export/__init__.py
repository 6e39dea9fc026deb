"""Taking a model elsewhere: ONNX (front end + encoder, waveform in) and the Hugging Face Hub.

Both are imported on use (``audiomaepp.export.onnx``, ``audiomaepp.export.hub``): ``onnx`` needs
the ``[onnx]`` extra."""
