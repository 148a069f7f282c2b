// Empty: the translation unit that builds the programs' precompiled header
// (cmake/RotaryAttentionPrecompiledHeaders.cmake).
