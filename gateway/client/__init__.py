"""The user side: turning sbatch-style input into API requests, and talking to the gateway over HTTP."""
