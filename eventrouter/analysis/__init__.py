"""What only check, explain and test need: loops, references, tense, route tests."""
