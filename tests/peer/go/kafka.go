package main

const saramaVersion = "1.22.1"

func produce(args []string) { fail("todo") }
func consume(args []string) { fail("todo") }
func group(args []string)   { fail("todo") }
