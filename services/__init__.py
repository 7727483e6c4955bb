"""One folder per service and nothing else; ``schemas/flow.py`` says what each consumes and produces."""
