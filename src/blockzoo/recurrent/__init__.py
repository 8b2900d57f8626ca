"""Recurrent cells and layers: Elman, Jordan, LSTM (with peepholes), GRU."""
