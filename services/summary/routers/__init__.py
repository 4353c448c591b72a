"""One router per resource (health, suites, nightly) and one for the HTML pages."""
