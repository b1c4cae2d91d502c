"""The competing networks, one module each: synthesizer S, classifier targets T."""
