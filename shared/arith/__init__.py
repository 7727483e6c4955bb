"""Small shared arithmetic every model library may use: mask components and clean-up (``masks.py``),
colour conversion (``colour.py``). Pure numpy, no models, no I/O; it imports nothing of skuforge, so a
model library that needs a mask's largest blob or a Lab colour imports this, not another library."""
