"""callbridge: a telephony voice-bot bridge. Importing the package loads nothing: `python -m callbridge` serves."""
