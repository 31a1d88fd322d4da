"""The stages of a run (generate, train, evaluate), each with an identity, a status and a run; the
builder that makes their components; the checks and trials before they spend time; the runner, the
study and the commands built on them."""
