"""Redis I/O shared by the node and the producer, beneath both (it knows neither)."""
