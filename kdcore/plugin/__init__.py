"""The plugin machinery: what a component is (its parameters, the data it handles, its kind's
contract), how plugins are found and registered, and how core calls into their code. The public part
of it is `kdcore.api`."""
