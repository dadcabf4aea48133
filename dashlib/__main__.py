from dashlib.cli import console

console()
