//! A 16550A UART with its interrupt, as a PC's COM1.
