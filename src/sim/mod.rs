//! The simulated OpenAI-compatible model server (`switchyard sim`).
