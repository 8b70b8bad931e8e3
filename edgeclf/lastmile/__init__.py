"""The last mile: what an app feeds the model, against what training fed it.

mistakes.py names the known ways an app's preprocessing goes wrong and makes, from an image
file, the pixels each of them feeds the model; sensitivity.py measures what each costs an
artefact on its test split (the resize-sensitivity table with the other mistakes).
"""
