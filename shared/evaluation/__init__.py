"""Does the generated data help a classifier? The few-shot evaluation behind ``skuforge evaluate``."""
