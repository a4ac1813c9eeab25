SELECT id name FROM;
